import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { DroppedPoint, NewPoint } from '../agent/telemetry/points.js';
import { REPO } from './helpers/child.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

let dir: string;
let file: string;
const open: AgentDatabase[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-outbox-'));
  file = join(dir, 'agent.db');
});
afterEach(async () => {
  for (const db of open.splice(0)) db.close();
  await rm(dir, { recursive: true, force: true });
});

async function openOutbox(limits: { maxRows?: number; maxBytes?: number } = {}): Promise<{ db: AgentDatabase; outbox: TelemetryOutbox }> {
  const db = AgentDatabase.open(file);
  open.push(db);
  const outbox = new TelemetryOutbox({ database: () => db, maxRows: limits.maxRows ?? 10_000, maxBytes: limits.maxBytes ?? 1 << 30, logger });
  await outbox.start();
  return { db, outbox };
}

const point = (count: number): NewPoint => ({
  ts: new Date().toISOString(),
  kind: 'inference',
  model: 'mnist',
  version: 1,
  intervalS: 10,
  count,
  errors: 0,
  clientErrors: 0,
  latencyMs: { p50: 1, p90: 2, p99: 3, max: 4, mean: 1.5 },
});

const seqsIn = (db: AgentDatabase): number[] =>
  (db.db.prepare('SELECT seq FROM telemetry_outbox ORDER BY seq').all() as { seq: number }[]).map((r) => r.seq);

describe('TelemetryOutbox', () => {
  it('numbers points strictly increasing, never reusing a seq across reopen, even after everything was sent', async () => {
    const first = await openOutbox();
    const a = first.outbox.append([point(1), point(2), point(3)]);
    expect(a).toEqual([1, 2, 3]);
    const batch = first.outbox.lease(500, 1 << 20);
    expect(batch?.bodies.map((b) => JSON.parse(b).seq)).toEqual([1, 2, 3]);
    if (batch) first.outbox.ack(batch);
    expect(first.outbox.stats().rows).toBe(0);
    first.db.close();

    const second = await openOutbox();
    const b = second.outbox.append([point(4)]);
    const c = second.outbox.append([point(5), point(6)]);
    expect([...b, ...c]).toEqual([4, 5, 6]);
    second.db.close();

    const third = await openOutbox();
    expect(seqsIn(third.db)).toEqual([4, 5, 6]);
    expect(third.outbox.stats()).toMatchObject({ rows: 3, nextSeq: 7, droppedTotal: 0 });
    expect(third.outbox.append([point(7)])).toEqual([7]);
  });

  it('stores each point as its JSON with seq first', async () => {
    const { outbox } = await openOutbox();
    outbox.append([point(9)]);
    const batch = outbox.lease(10, 1 << 20);
    expect(batch?.bodies[0]).toMatch(/^\{"seq":1,"ts":"/);
    expect(JSON.parse(batch?.bodies[0] ?? '{}')).toMatchObject({ seq: 1, kind: 'inference', count: 9 });
  });

  it('leases at most maxPoints and maxBytes (but always one point), oldest first', async () => {
    const { outbox } = await openOutbox();
    outbox.append(Array.from({ length: 10 }, (_, i) => point(i)));
    const size = outbox.stats().bytes / 10;
    const byCount = outbox.lease(4, 1 << 20);
    expect(byCount).toMatchObject({ fromSeq: 1, toSeq: 4 });
    expect(() => outbox.lease(1, 1)).toThrow(/already leased/);
    outbox.release();
    const byBytes = outbox.lease(100, Math.floor(size * 2.5));
    expect(byBytes?.bodies).toHaveLength(2);
    outbox.release();
    expect(outbox.lease(100, 1)?.bodies).toHaveLength(1);
  });

  it('keeps within maxRows by dropping the oldest, counts drops durably and reports them as one point', async () => {
    const first = await openOutbox({ maxRows: 20 });
    for (let i = 1; i <= 50; i++) first.outbox.append([point(i)]);
    expect(seqsIn(first.db)).toEqual(Array.from({ length: 20 }, (_, i) => 31 + i));
    expect(first.outbox.stats()).toMatchObject({ rows: 20, droppedTotal: 30, pendingDrops: 30 });
    first.db.close();

    // The counters survive a restart, then become one "dropped" point.
    const second = await openOutbox({ maxRows: 20 });
    expect(second.outbox.stats()).toMatchObject({ rows: 20, droppedTotal: 30, pendingDrops: 30 });
    expect(second.outbox.reportDrops()).toBe(true);
    expect(second.outbox.reportDrops()).toBe(false);
    // The report takes the next seq; it may overshoot maxRows by itself until the next append.
    expect(seqsIn(second.db)).toHaveLength(21);
    const report = JSON.parse((second.db.db.prepare("SELECT body FROM telemetry_outbox WHERE kind = 'dropped'").get() as { body: string }).body) as DroppedPoint;
    expect(report).toMatchObject({ seq: 51, kind: 'dropped', count: 30, oldestSeq: 1, newestSeq: 30, reason: 'buffer full', totalDropped: 30 });
    expect(report).not.toHaveProperty('fromSeq');
    expect(second.outbox.stats()).toMatchObject({ rows: 21, droppedTotal: 30, pendingDrops: 0 });
    second.outbox.append([point(52)]);
    expect(second.outbox.stats()).toMatchObject({ rows: 20, droppedTotal: 32, pendingDrops: 2 });
  });

  it('keeps within maxBytes, never drops a leased batch, and folds a dropped report into the next', async () => {
    const { db, outbox } = await openOutbox({ maxRows: 5 });
    outbox.append(Array.from({ length: 5 }, (_, i) => point(i)));
    const batch = outbox.lease(2, 1 << 20); // seqs 1-2 in flight
    outbox.append([point(6), point(7)]); // evicts 3 and 4, not the leased 1-2
    expect(seqsIn(db)).toEqual([1, 2, 5, 6, 7]);
    if (batch) outbox.ack(batch);
    outbox.reportDrops(); // seq 8: count 2 (3-4)
    outbox.append([point(9), point(10), point(11), point(12), point(13)]); // evicts 5, 6, 7 and the report (8)
    expect(seqsIn(db)).toEqual([9, 10, 11, 12, 13]);
    expect(outbox.stats()).toMatchObject({ droppedTotal: 5, pendingDrops: 5 });
    outbox.reportDrops();
    const report = JSON.parse((db.db.prepare("SELECT body FROM telemetry_outbox WHERE kind = 'dropped'").get() as { body: string }).body) as DroppedPoint;
    expect(report).toMatchObject({ seq: 14, count: 5, oldestSeq: 3, newestSeq: 8, reason: 'buffer full', totalDropped: 5 });

    const bytes = await openOutbox({ maxBytes: 1500 });
    for (let i = 0; i < 40; i++) bytes.outbox.append([point(i)]);
    expect(bytes.outbox.stats().bytes).toBeLessThanOrEqual(1500);
    expect(bytes.outbox.stats().bytes).toBe(
      (bytes.db.db.prepare('SELECT SUM(bytes) AS b FROM telemetry_outbox').get() as { b: number }).b,
    );
  });

  it('loses no committed point to kill -9 of the writing process', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'test/fixtures/telemetry-writer.ts'), file], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.split('\n').length > 2000) resolve();
      });
      child.once('exit', () => reject(new Error(`writer exited early: ${err}`)));
    });
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const printed = out.split('\n').filter((l) => /^\d+$/.test(l)).map(Number);
    expect(printed.length).toBeGreaterThan(1000);

    const { db, outbox } = await openOutbox();
    const stored = new Set(seqsIn(db));
    const missing = printed.filter((seq) => !stored.has(seq));
    expect(missing).toEqual([]);
    // Rows may exceed what was printed (committed, killed before printing), never the counter.
    expect(outbox.stats().nextSeq).toBe(Math.max(...stored) + 1);
    expect([...stored]).toEqual(Array.from({ length: stored.size }, (_, i) => i + 1));
  });
});
