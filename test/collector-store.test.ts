/**
 * One suite, run against both collector stores (MQTT.js's abstract_client
 * pattern): SQLite in a temp file, and a real PostgreSQL server started for
 * this file (initdb into a temp dir, torn down afterwards). Also covers
 * `edgefleet status`, which reads either.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it } from 'vitest';
import { status } from '../fleet/commands/status.js';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import { SQLITE_MIGRATIONS, SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetStore } from '../fleet/collector/store.js';
import type { CommandIo } from '../fleet/command.js';
import type { HealthPoint, InferencePoint, ReportedState } from '../protocol/index.js';
import { healthPointSchema, inferencePointSchema, reportedStateSchema } from '../protocol/index.js';
import { postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './helpers/postgres.js';

const NOW = Date.parse('2026-03-01T12:00:00.000Z');
const at = (ms: number): string => new Date(ms).toISOString();

// ---- fixtures, checked against the protocol schemas -------------------------

function inference(seq: number, ts: number, extra: Partial<InferencePoint> = {}): InferencePoint {
  return inferencePointSchema.parse({
    seq, ts: at(ts), kind: 'inference', model: 'mnist', version: 3, intervalS: 10, count: 100, errors: 0,
    latencyMs: { p50: 0.4, p90: 0.6, p99: 1.1, max: 2.3, mean: 0.45 }, ...extra,
  });
}

function health(seq: number, ts: number, extra: Partial<HealthPoint> = {}): HealthPoint {
  return healthPointSchema.parse({
    seq, ts: at(ts), kind: 'health', cpuPct: 12.5, load1: 0.3, memUsedBytes: 200e6, memTotalBytes: 1e9,
    tempC: 51.2, diskFreeBytes: 1e9, rssBytes: 5e7, uptimeS: 3600, gpus: [], ...extra,
  });
}

function reported(device: string, groups: string[], models: [string, number][], ts = NOW): ReportedState {
  return reportedStateSchema.parse({
    schema: 1, device, groups, ts: at(ts),
    desired: { source: 'device', serial: 7, status: 'applied', error: null },
    models: models.map(([name, version]) => ({
      name, version, state: 'serving', labels: ['stable'], executionProvider: 'cpu', sha256: null, progress: 1, error: null,
    })),
    agent: { version: '0.1.0', arch: 'arm64', startedAt: at(ts - 60_000), executionProviders: { available: ['cpu'], unavailable: {} } },
  });
}

async function statusCli(db: string, args: string[]): Promise<{ out: string; notes: string }> {
  const out: string[] = [];
  const notes: string[] = [];
  const io: CommandIo = { out: (l) => out.push(l), note: (l) => notes.push(l), stderr: process.stderr, cwd: tmpdir() };
  await status.run(['--db', db, ...args], io);
  return { out: out.join('\n'), notes: notes.join('\n') };
}

// ---- the suite both backends run ------------------------------------------

/** Another store on the database `db` names. */
const reopen = (db: string): FleetStore => (db.startsWith('sqlite:') ? new SqliteStore(db.slice('sqlite:'.length)) : new PostgresStore(db));

interface Backend {
  /** A fresh, empty store and the --db URL that names it. */
  fresh(): Promise<{ store: FleetStore; db: string }>;
}

function storeSuite(name: string, backend: () => Backend, skip: string | false): void {
  describe.skipIf(skip !== false)(`${name} collector store${skip ? ` (skipped: ${skip})` : ''}`, () => {
    let store: FleetStore;
    let db: string;
    beforeEach(async () => {
      ({ store, db } = await backend().fresh());
      await store.init();
    });
    afterEach(async () => store.close());

    it('stores a point once per (device, seq), whatever arrives twice', async () => {
      expect(await store.insertPoints('pi-1', [inference(1, NOW), health(2, NOW)])).toBe(2);
      expect(await store.insertPoints('pi-1', [health(2, NOW), inference(3, NOW + 10_000)])).toBe(1);
      expect(await store.insertPoints('pi-2', [inference(1, NOW)])).toBe(1); // same seq, other device
      const series = await store.series('pi-1', { from: NOW - 1, to: NOW + 60_000 });
      expect(series.inference.map((s) => s.ts)).toEqual([at(NOW), at(NOW + 10_000)]);
      expect(series.health).toEqual([{ ts: at(NOW), cpuPct: 12.5, tempC: 51.2, memUsedBytes: 200e6, memTotalBytes: 1e9 }]);
      expect(series.inference[0]).toEqual({ ts: at(NOW), model: 'mnist', version: 3, count: 100, errors: 0, p50: 0.4, p99: 1.1 });
    });

    it('series keep to the range and return the newest samples up to the limit, oldest first', async () => {
      await store.insertPoints('pi-1', [1, 2, 3, 4, 5].map((i) => health(i, NOW + i * 1000, { cpuPct: i })));
      const range = await store.series('pi-1', { from: NOW + 2000, to: NOW + 4000 });
      expect(range.health.map((h) => h.cpuPct)).toEqual([2, 3, 4]);
      const limited = await store.series('pi-1', { from: NOW, to: NOW + 10_000, limit: 2 });
      expect(limited.health.map((h) => h.cpuPct)).toEqual([4, 5]);
      expect((await store.series('nobody', { from: 0, to: NOW })).health).toEqual([]);
    });

    it('assembles the fleet table from status, state and the newest telemetry', async () => {
      await store.upsertStatus('pi-1', { online: true, ts: at(NOW) }, NOW);
      await store.upsertState(reported('pi-1', ['lab'], [['mnist', 3], ['ocr', 1]]), NOW);
      await store.insertPoints('pi-1', [
        inference(10, NOW + 20_000, { latencyMs: { p50: 0.5, p90: 0.7, p99: 1.5, max: 3, mean: 0.6 }, errors: 2 }),
        inference(9, NOW + 10_000), // older, arrives in the same batch
        inference(11, NOW + 5_000, { model: 'ocr', version: 1, count: 0, latencyMs: null }),
        health(12, NOW + 30_000, { cpuPct: 40, tempC: null }),
      ]);
      await store.insertPoints('pi-1', [health(8, NOW, { cpuPct: 99 })]); // late and old: not the latest
      await store.upsertStatus('pi-2', { online: false }, NOW + 1000); // the last will: no ts
      const rows = await store.fleetStatus();
      expect(rows.map((r) => r.device)).toEqual(['pi-1', 'pi-2']);
      const [pi1, pi2] = rows;
      expect(pi1).toMatchObject({ online: true, groups: ['lab'], desired: { serial: 7, status: 'applied' }, agent: { version: '0.1.0', arch: 'arm64' } });
      expect(pi1?.models.map((m) => `${m.name}:${m.version} ${m.state}`)).toEqual(['mnist:3 serving', 'ocr:1 serving']);
      expect(pi1?.inference).toEqual([
        { model: 'mnist', version: 3, ts: at(NOW + 20_000), intervalS: 10, count: 100, errors: 2, p50: 0.5, p99: 1.5 },
        { model: 'ocr', version: 1, ts: at(NOW + 5_000), intervalS: 10, count: 0, errors: 0, p50: null, p99: null },
      ]);
      expect(pi1?.health).toMatchObject({ cpuPct: 40, tempC: null, ts: at(NOW + 30_000) });
      expect(pi1?.lastSeen).toBe(at(NOW + 30_000));
      expect(pi2).toMatchObject({ online: false, groups: [], models: [], health: null, lastSeen: at(NOW + 1000) });
    });

    it('keeps the newer reported state when an older one arrives late', async () => {
      await store.upsertState(reported('pi-1', ['lab', 'v2'], [['mnist', 4]], NOW + 5000), NOW);
      await store.upsertState(reported('pi-1', ['lab'], [['mnist', 3]], NOW), NOW + 1);
      const [row] = await store.fleetStatus();
      expect(row?.groups).toEqual(['lab', 'v2']);
      expect(row?.models[0]?.version).toBe(4);
    });

    it('filters the fleet by group and by model', async () => {
      await store.upsertState(reported('pi-1', ['lab'], [['mnist', 3]]), NOW);
      await store.upsertState(reported('pi-2', ['lab', 'field'], [['ocr', 1]]), NOW);
      await store.upsertState(reported('pi-3', ['field'], [['mnist', 2], ['ocr', 1]]), NOW);
      await store.upsertStatus('pi-4', { online: true, ts: at(NOW) }, NOW); // no state: in no group
      await store.insertPoints('pi-3', [health(1, NOW)]);
      const devices = async (f: { group?: string; model?: string }): Promise<string[]> => (await store.fleetStatus(f)).map((r) => r.device);
      expect(await devices({})).toEqual(['pi-1', 'pi-2', 'pi-3', 'pi-4']);
      expect(await devices({ group: 'lab' })).toEqual(['pi-1', 'pi-2']);
      expect(await devices({ model: 'mnist' })).toEqual(['pi-1', 'pi-3']);
      expect(await devices({ group: 'field', model: 'ocr' })).toEqual(['pi-2', 'pi-3']);
      expect(await devices({ group: 'nowhere' })).toEqual([]);
      expect((await store.fleetStatus({ group: 'field' }))[1]?.health?.cpuPct).toBe(12.5);
    });

    it('stores an event once, and two different events of the same millisecond both', async () => {
      const event = { ts: at(NOW), type: 'activated', model: 'mnist', version: 3 };
      expect(await store.insertEvent('pi-1', event)).toBe(true);
      expect(await store.insertEvent('pi-1', { ...event })).toBe(false);
      expect(await store.insertEvent('pi-1', { ts: at(NOW), type: 'unloaded', model: 'mnist', version: 2 })).toBe(true);
      expect(await store.insertEvent('pi-1', { ts: at(NOW + 1), type: 'trust.updated', detail: 'version 2' })).toBe(true);
      const events = await store.events('pi-1', { from: NOW, to: NOW + 1 });
      expect(events).toHaveLength(3);
      expect(events[2]).toEqual({ device: 'pi-1', ts: at(NOW + 1), type: 'trust.updated', detail: 'version 2' });
      expect(events.slice(0, 2).map((e) => e.type).sort()).toEqual(['activated', 'unloaded']);
    });

    it('prune deletes points and events older than the cut-off, and nothing newer', async () => {
      const day = 86_400_000;
      await store.insertPoints('pi-1', [health(1, NOW - 40 * day), inference(2, NOW - 31 * day), health(3, NOW - 29 * day), health(4, NOW)]);
      await store.insertEvent('pi-1', { ts: at(NOW - 35 * day), type: 'activated' });
      await store.insertEvent('pi-1', { ts: at(NOW - day), type: 'activated' });
      expect(await store.prune(NOW - 30 * day)).toEqual({ points: 2, events: 1 });
      const left = await store.series('pi-1', { from: 0, to: NOW });
      expect([...left.health, ...left.inference].map((p) => p.ts)).toEqual([at(NOW - 29 * day), at(NOW)]);
      expect(await store.events('pi-1', { from: 0, to: NOW })).toHaveLength(1);
      expect(await store.prune(NOW - 30 * day)).toEqual({ points: 0, events: 0 });
    });

    it('opens an existing database again, also from two collectors at once, keeping the data', async () => {
      await store.insertPoints('pi-1', [health(1, NOW)]);
      await store.close();
      const [again, other] = [reopen(db), reopen(db)];
      await Promise.all([again.init(), other.init()]);
      await other.close();
      expect((await again.series('pi-1', { from: 0, to: NOW })).health).toHaveLength(1);
      store = again;
    });

    it('edgefleet status prints the table, filters by group and model, and --json', async () => {
      await store.upsertStatus('pi-1', { online: true, ts: at(NOW) }, NOW);
      await store.upsertState(reported('pi-1', ['lab'], [['mnist', 3]]), NOW);
      await store.upsertState(reported('pi-2', ['field'], [['ocr', 1]]), NOW);
      await store.insertPoints('pi-1', [inference(1, NOW + 1000), health(2, NOW + 2000, { cpuPct: 33.3, tempC: 48 })]);
      const table = await statusCli(db, []);
      const lines = table.out.split('\n');
      expect(lines[0]).toMatch(/^DEVICE\s+ONLINE\s+GROUPS\s+DESIRED\s+MODELS\s+P50 MS\s+P99 MS\s+ERRORS\s+CPU %\s+TEMP C\s+DROPPED\s+OUTBOX\s+LAST SEEN$/);
      expect(lines[1]).toMatch(/^pi-1\s+yes\s+lab\s+7 applied\s+mnist:3 serving\s+0\.40\s+1\.10\s+0\s+33\.3\s+48\.0\s+0\s+-\s+\d+ d ago$/);
      expect(lines[2]).toMatch(/^pi-2\s+\?\s+field\s+7 applied\s+ocr:1 serving\s+-\s+-\s+-\s+-\s+-/);
      const fieldTable = (await statusCli(db, ['--group', 'field'])).out.split('\n\n')[0] ?? '';
      expect(fieldTable.split('\n').slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['pi-2']);
      const json = JSON.parse((await statusCli(db, ['--model', 'mnist', '--json'])).out) as any[];
      expect(json.map((r) => r.device)).toEqual(['pi-1']);
      expect(json[0].inference[0]).toMatchObject({ model: 'mnist', p50: 0.4, p99: 1.1, errors: 0 });
      expect(json[0].health).toMatchObject({ cpuPct: 33.3, tempC: 48 });
      expect(await statusCli(db, ['--group', 'nowhere'])).toEqual({ out: '', notes: 'no devices in group nowhere' });
      await expect(statusCli(db, ['--group', 'bad/group'])).rejects.toThrow(/not a group name/);
    });

    it('edgefleet status shows one page of a large fleet unless --all, with the whole fleet in its fleet line', async () => {
      for (let i = 0; i < 150; i++) {
        const id = `pi-${String(i).padStart(3, '0')}`;
        await store.upsertStatus(id, { online: i % 3 !== 0, ts: at(NOW) }, NOW);
        await store.upsertState(reported(id, ['lab'], [['mnist', 3]]), NOW);
      }
      const paged = (await statusCli(db, [])).out.split('\n');
      expect(paged.filter((l) => /^pi-\d{3}\s/.test(l))).toHaveLength(100);
      expect(paged).toContain('showing 100 of 150 devices (--limit N or --all for more)');
      expect(paged).toContain('150 device(s), 100 online');
      const all = (await statusCli(db, ['--all'])).out.split('\n');
      expect(all.filter((l) => /^pi-\d{3}\s/.test(l))).toHaveLength(150);
      expect(all.some((l) => l.startsWith('showing'))).toBe(false);
      expect(JSON.parse((await statusCli(db, ['--json'])).out)).toHaveLength(150);
    });
  });
}

// ---- SQLite -------------------------------------------------------------------

let sqliteDir: string;
beforeAll(async () => {
  sqliteDir = await mkdtemp(join(tmpdir(), 'edgefleet-collector-sqlite-'));
});
afterAll(async () => rm(sqliteDir, { recursive: true, force: true }));

let sqliteCount = 0;
const sqlite: Backend = {
  async fresh() {
    const file = join(sqliteDir, `fleet-${++sqliteCount}.db`);
    return { store: new SqliteStore(file), db: `sqlite:${file}` };
  },
};


storeSuite('SQLite', () => sqlite, false);

describe('SQLite collector store specifics', () => {
  it('uses WAL with synchronous=FULL', async () => {
    const file = join(sqliteDir, 'pragmas.db');
    const store = new SqliteStore(file);
    await store.init();
    await store.close();
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(file, { readonly: true });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
  });

  it('refuses a database written by a newer collector, naming the collector', async () => {
    const file = join(sqliteDir, 'newer.db');
    const store = new SqliteStore(file);
    await store.init();
    await store.close();
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(file);
    db.pragma('user_version = 99');
    db.close();
    await expect(new SqliteStore(file).init()).rejects.toThrow(new RegExp(`schema version 99 but this collector knows only ${SQLITE_MIGRATIONS.length}; it was written by a newer collector`));
  });

  it('edgefleet status refuses a database that does not exist instead of creating one', async () => {
    const missing = join(sqliteDir, 'missing.db');
    await expect(statusCli(`sqlite:${missing}`, [])).rejects.toThrow(/no collector database at .*missing\.db/);
    expect(existsSync(missing)).toBe(false);
  });
});

// ---- PostgreSQL: a real server --------------------------------------------

const pgSkip = postgresSkipReason();
let server: PostgresServer | undefined;
if (pgSkip === false) {
  beforeAll(async () => {
    server = await startPostgres(postgresBin() as string);
  }, 90_000);
  afterAll(async () => server?.stop());
}

let pgCount = 0;
const postgres = (): Backend => ({
  async fresh() {
    if (server === undefined) throw new Error('PostgreSQL did not start');
    const name = `fleet_${++pgCount}`;
    await server.admin.query(`CREATE DATABASE ${name}`);
    const db = `postgres://postgres@127.0.0.1:${server.port}/${name}`;
    return { store: new PostgresStore(db), db };
  },
});

storeSuite('PostgreSQL', postgres, pgSkip);
