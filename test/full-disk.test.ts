import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { artifactsInProgress } from '../agent/rollout/block-progress.js';
import { classify } from '../agent/rollout/errors.js';
import { ModelStore } from '../agent/rollout/model-store.js';
import { RolloutState, type ActiveDesired } from '../agent/rollout/rollout-state.js';
import { discardAbandonedStaging, cleanStagingAtStart } from '../agent/rollout/staging-cleanup.js';
import { StagingFile } from '../agent/rollout/staging-file.js';
import { AgentDatabase, MIGRATIONS, kv } from '../agent/store/database.js';
import { writeFileAtomic } from '../agent/store/fs-atomic.js';
import { NoSpaceError, freeBytes, isNoSpace } from '../agent/store/no-space.js';
import { StateDirLock } from '../agent/store/state-lock.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { DroppedPoint, NewPoint } from '../agent/telemetry/points.js';
import { mountTmpfs, type Tmpfs } from './helpers/tmpfs.js';

/**
 * Every write path of the agent on a filesystem that is really full (a small
 * tmpfs this test mounts and fills): each fails with one typed error naming
 * the filesystem, the file and the bytes, nothing throws into a caller that
 * cannot handle it, and everything works again once there is room. The
 * agent as a whole, on the same kind of tmpfs, is test/full-disk-agent.test.ts.
 */

const mounted = await mountTmpfs(24 * 1024 * 1024);
const skip = 'skip' in mounted ? mounted.skip : false;
if (skip) console.warn(`full-disk tests skipped: ${skip}`);
const fs = mounted as Tmpfs;

afterAll(async () => {
  if (!skip) await fs.unmount();
});

interface LogLine {
  level: number;
  msg: string;
  err?: string;
}
function capture(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { logger: pino({ level: 'debug' }, { write: (l: string) => void lines.push(JSON.parse(l) as LogLine) }), lines };
}

const NO_SPACE = /^no space left on \S+ for \S+/;

const point = (count: number): NewPoint => ({
  ts: new Date().toISOString(),
  kind: 'inference',
  model: 'm',
  version: 1,
  intervalS: 1,
  count,
  errors: 0,
  clientErrors: 0,
  latencyMs: { p50: 1, p90: 1, p99: 1, max: 1, mean: 1 },
});

describe.skipIf(skip)('on a full filesystem', () => {
  let dir: string;
  let n = 0;
  const open: AgentDatabase[] = [];
  beforeEach(async () => {
    dir = join(fs.dir, `case-${++n}`);
    await mkdir(dir);
  });
  afterEach(async () => {
    for (const db of open.splice(0)) db.close();
    await fs.free();
    await rm(dir, { recursive: true, force: true });
  });
  const openDb = (options: Parameters<typeof AgentDatabase.open>[1] = {}): AgentDatabase => {
    const db = AgentDatabase.open(join(dir, 'agent.db'), options);
    open.push(db);
    return db;
  };

  it('a SQLite write is a NoSpaceError naming the filesystem, the file and the bytes; reads go on; writes work again with room', () => {
    const db = openDb();
    const store = kv(db);
    store.setJson('a', { x: 1 });
    fs.fill();
    const err = (() => {
      try {
        store.setJson('b', { big: 'y'.repeat(20_000) });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(NoSpaceError);
    expect((err as Error).message).toMatch(NO_SPACE);
    expect((err as Error).message).toContain(`${fs.dir} for ${join(dir, 'agent.db')}: needs 24576 bytes`);
    expect(classify(err)).toMatchObject({ code: 'NO_SPACE', status: 'failed', retryable: true, untilFixed: true });
    expect(store.getJson('a')).toEqual({ x: 1 });
    return fs.free().then(() => {
      store.setJson('b', { x: 2 });
      expect(store.getJson('b')).toEqual({ x: 2 });
    });
  });

  it('opens a database closed cleanly (no -shm left) in exclusive locking mode, reads it, and writes once there is room', async () => {
    const first = AgentDatabase.open(join(dir, 'agent.db'));
    kv(first).setJson('kept', 1);
    first.close();
    expect(existsSync(join(dir, 'agent.db-shm'))).toBe(false);
    fs.fill();
    const { logger, lines } = capture();
    const db = openDb({ logger });
    expect(db.readOnly).toBeUndefined();
    expect(db.db.pragma('locking_mode', { simple: true })).toBe('exclusive');
    expect(kv(db).getJson('kept')).toBe(1);
    expect(lines.some((l) => l.msg.includes('exclusive locking mode'))).toBe(true);
    expect(() => kv(db).setJson('new', 'v'.repeat(10_000))).toThrow(NoSpaceError);
    await fs.free();
    kv(db).setJson('new', 2);
    expect(kv(db).getJson('new')).toBe(2);
  });

  it('opens a database it has no room to create or migrate as a read-only copy: reads what was there, every write is a NoSpaceError', () => {
    const old = AgentDatabase.open(join(dir, 'agent.db'), { migrations: MIGRATIONS.slice(0, 1) });
    kv(old).setJson('kept', 'yes');
    old.close();
    fs.fill();
    const { logger, lines } = capture();
    const db = openDb({ logger });
    expect(db.readOnly).toBeInstanceOf(NoSpaceError);
    expect(db.schemaVersion).toBe(MIGRATIONS.length);
    expect(kv(db).getJson('kept')).toBe('yes');
    expect(() => kv(db).setJson('k', 1)).toThrow(/read-only until the agent restarts with room/);
    expect(isNoSpace((() => { try { kv(db).delete('kept'); } catch (e) { return e; } })())).toBe(true);
    expect(lines.find((l) => l.level === 50)?.msg).toMatch(/read-only/);

    // A file never created: an empty schema, as on a first boot.
    const fresh = AgentDatabase.open(join(dir, 'fresh.db'));
    open.push(fresh);
    expect(fresh.readOnly).toBeInstanceOf(NoSpaceError);
    expect(fresh.schemaVersion).toBe(MIGRATIONS.length);
    expect(kv(fresh).getJson('kept')).toBeUndefined();
  });

  it('an essential record uses the space reserve, which is made again once there is room', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const { logger, lines } = capture();
      const db = openDb({ logger });
      const reserve = join(dir, 'reserved-space');
      expect((await readFile(reserve)).length).toBe(1024 * 1024);
      fs.fill();
      expect(() => kv(db).setJson('plain', 'x'.repeat(5000))).toThrow(NoSpaceError);
      kv(db).setJson('record', 'x'.repeat(5000), { essential: true });
      expect(kv(db).getJson('record')).toHaveLength(5000);
      expect(existsSync(reserve)).toBe(false);
      expect(lines.some((l) => l.msg.includes('released the space reserve'))).toBe(true);
      await fs.free();
      vi.setSystemTime(Date.now() + 11_000);
      kv(db).setJson('later', 1);
      expect(existsSync(reserve)).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });

  it('an atomic file write is a NoSpaceError with the bytes, leaving the old file and no temp file', async () => {
    const file = join(dir, 'trust.json');
    await writeFileAtomic(file, 'old');
    fs.fill();
    const err = await writeFileAtomic(file, Buffer.alloc(300_000, 1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoSpaceError);
    expect((err as Error).message).toContain(`for ${file}: needs 300000 bytes`);
    expect(await readFile(file, 'utf8')).toBe('old');
    expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('the state-directory lock starts on a full filesystem', async () => {
    const lock = new StateDirLock(dir);
    await lock.start();
    await lock.stop();
    fs.fill();
    const again = new StateDirLock(dir);
    await again.start();
    await again.stop();
  });

  it('a staging write without room is a NoSpaceError with the bytes the file still needs', async () => {
    const path = join(dir, 'staging', `${'a'.repeat(64)}.part`);
    const { file } = await StagingFile.open(path, 4 * 1024 * 1024);
    await file.write(Buffer.alloc(1 << 20, 1), 0);
    fs.fill();
    const err = await file.write(Buffer.alloc(1 << 20, 2), 1 << 20).catch((e: unknown) => e);
    await file.close();
    expect(err).toBeInstanceOf(NoSpaceError);
    expect((err as Error).message).toMatch(new RegExp(`for ${path}: needs \\d+ bytes`));
    expect((err as NoSpaceError).needed).toBeGreaterThanOrEqual(3 * 1024 * 1024 - 4096);
  });

  it('a staging write that partly fits fails instead of recording a short block', async () => {
    const path = join(dir, 'staging', `${'b'.repeat(64)}.part`);
    const { file } = await StagingFile.open(path, 2 * 1024 * 1024);
    // Leave 64 KiB: a 1 MiB block gets a short write, then ENOSPC.
    await writeFile(join(fs.dir, 'filler-partial'), Buffer.alloc(Math.max(0, (freeBytes(fs.dir) ?? 0) - 64 * 1024), 1));
    const err = await file.write(Buffer.alloc(1 << 20, 3), 0).catch((e: unknown) => e);
    await file.close();
    expect(err).toBeInstanceOf(NoSpaceError);
  });

  it('an install without room keeps the verified staging file, so the next try needs no download', async () => {
    const store = new ModelStore(dir);
    await store.init();
    const bytes = Buffer.alloc(64 * 1024, 5);
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    await writeFile(store.stagingFile(sha256), bytes);
    fs.fill();
    const err = await store.install('m', 1, sha256, { envelope: 'x'.repeat(50_000) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoSpaceError);
    expect((err as Error).message).toMatch(/manifest\.json: needs \d+ bytes/);
    expect(await readFile(store.stagingFile(sha256))).toEqual(bytes);
    expect(await store.list()).toEqual([]);
    await fs.free();
    await store.install('m', 1, sha256, { envelope: 'x' });
    expect(await store.list()).toEqual([{ name: 'm', version: 1, sha256 }]);
  });

  it('telemetry: points are refused and counted as dropped, logged once, nothing throws; stored points stay and seqs go on', async () => {
    const db = openDb();
    const { logger, lines } = capture();
    const outbox = new TelemetryOutbox({ database: () => db, maxRows: 10_000, maxBytes: 1 << 30, logger });
    await outbox.start();
    expect(outbox.append([point(1), point(2)])).toEqual([1, 2]);
    const sent = outbox.lease(1, 1 << 20);
    fs.fill();
    let refused = 0;
    for (let i = 0; i < 50; i++) if (outbox.append([point(100 + i)]).length === 0) refused++;
    expect(refused).toBeGreaterThan(0);
    // The broker acknowledged a batch: its rows cannot be deleted yet, and it is never sent again.
    if (sent) outbox.ack(sent);
    expect(outbox.lease(10, 1 << 20)?.fromSeq).toBe(2);
    outbox.release();
    expect(outbox.reportDrops()).toBe(false);
    expect(outbox.stats()).toMatchObject({ droppedTotal: refused, pendingDrops: refused });
    expect(lines.filter((l) => l.msg.startsWith('no room for telemetry'))).toHaveLength(1);
    expect(lines.find((l) => l.msg.startsWith('no room for telemetry'))?.err).toMatch(NO_SPACE);

    await fs.free();
    const next = outbox.append([point(3)]);
    expect(next).toHaveLength(1);
    expect(lines.some((l) => l.msg === 'room for telemetry again')).toBe(true);
    expect(outbox.reportDrops()).toBe(true);
    const rows = db.db.prepare('SELECT seq, body FROM telemetry_outbox ORDER BY seq').all() as { seq: number; body: string }[];
    // Seq 1 was acknowledged (deleted now); 2 stays; every stored point has the next seq, no gap.
    expect(rows.map((r) => r.seq)).toEqual([2, ...Array.from({ length: rows.length - 1 }, (_, i) => 3 + i)]);
    const report = JSON.parse(rows.at(-1)?.body ?? '{}') as DroppedPoint;
    // Refused points never had a seq: reported apart, with no range (section 13).
    expect(report).toMatchObject({ kind: 'dropped', count: refused, oldestSeq: 0, newestSeq: 0, reason: 'no space', totalDropped: refused });
    expect(outbox.stats()).toMatchObject({ droppedTotal: refused, pendingDrops: 0 });
    await outbox.stop();
  });

  it('rollout state: a commit without room changes nothing and throws; a record is kept in memory and written once there is room', async () => {
    const db = openDb();
    const store = kv(db);
    const { logger, lines } = capture();
    const state = new RolloutState(store, logger);
    const active: ActiveDesired = { key: 'device', source: 'device', serial: 7, acceptedAt: 1, models: [{ name: 'm', version: 2, labels: [], manifest: { big: 'z'.repeat(40_000) } }] };
    state.setServing([{ name: 'm', version: 1, isDefault: true }]);
    // Without the reserve, so that a record really has to wait.
    await rm(join(dir, 'reserved-space'));
    fs.fill();
    expect(() => state.acceptDocument('device', 7, 'h'.repeat(64), active)).toThrow(NoSpaceError);
    expect(state.desiredSerial('device')).toBeUndefined();
    expect(state.desiredHash('device')).toBeUndefined();
    expect(state.active()).toBeUndefined();
    expect(() => state.setActivation({ name: 'm', version: 2, previous: 1, since: 'now' })).toThrow(NoSpaceError);
    expect(state.activation()).toBeUndefined();

    state.setServing([{ name: 'm', version: 1, isDefault: false }, { name: 'm', version: 2, isDefault: true }]);
    state.setPrevious('m', 1);
    expect(state.unsavedRecords).toBeGreaterThan(0);
    expect(state.serving()).toEqual([{ name: 'm', version: 1, isDefault: false }, { name: 'm', version: 2, isDefault: true }]);
    expect(state.previous()).toEqual({ m: 1 });
    expect(store.getJson('rollout.serving')).toEqual([{ name: 'm', version: 1, isDefault: true }]);
    expect(lines.filter((l) => l.msg.startsWith('rollout state kept in memory'))).toHaveLength(1);

    await fs.free();
    state.acceptDocument('device', 7, 'h'.repeat(64), active);
    expect(state.unsavedRecords).toBe(0);
    expect(store.getJson('rollout.serving')).toEqual([{ name: 'm', version: 1, isDefault: false }, { name: 'm', version: 2, isDefault: true }]);
    expect(store.getJson('rollout.previous')).toEqual({ m: 1 });
    expect(state.desiredSerial('device')).toBe(7);
  });
});

describe('abandoned staging files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = join(skip ? (await import('node:os')).tmpdir() : fs.dir, `staging-${process.pid}`);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('go with their progress rows unless the document in force lists them; interrupted installs go at start-up', async () => {
    const store = new ModelStore(dir);
    await store.init();
    const db = AgentDatabase.open(join(dir, 'agent.db'));
    try {
      const [kept, gone, rowsOnly] = ['1', '2', '3'].map((c) => c.repeat(64)) as [string, string, string];
      for (const sha of [kept, gone]) await writeFile(store.stagingFile(sha), 'blocks');
      const insert = db.db.prepare('INSERT INTO artifact_blocks (sha256, idx) VALUES (?, 0)');
      for (const sha of [kept, gone, rowsOnly]) insert.run(sha);
      await mkdir(join(store.root, 'm', '4'), { recursive: true });
      await writeFile(join(store.root, 'm', '4', 'model.onnx'), 'interrupted before its manifest');
      const { logger } = capture();

      await cleanStagingAtStart(store, db, new Set([kept]), logger);
      expect(await store.staged()).toEqual([kept]);
      expect(artifactsInProgress(db)).toEqual([kept]);
      expect(existsSync(join(store.root, 'm', '4'))).toBe(false);

      expect(await discardAbandonedStaging(store, db, new Set(), logger)).toEqual([kept]);
      expect(await store.staged()).toEqual([]);
      expect(artifactsInProgress(db)).toEqual([]);
    } finally {
      db.close();
    }
  });
});
