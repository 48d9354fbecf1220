/**
 * FleetStore.fleetPage (issue 13 item 5): one page of the fleet table from the
 * per-device summary kept at write time. Checked against the reference it
 * must agree with, fleet-query.ts's pageFleet over the whole fleetStatus, on a
 * random fleet (odd device ids, devices without status, state or telemetry,
 * ties, nulls), for random sorts, filters and slices, after further writes,
 * and on a database migrated from schema 2. SQLite and a real PostgreSQL.
 */
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { openSqlite } from '../lib/sqlite.js';
import { FLEET_SORTS, pageFleet } from '../fleet/collector/fleet-query.js';
import type { FleetQuery } from '../fleet/collector/fleet-query.js';
import { POSTGRES_MIGRATIONS, PostgresStore } from '../fleet/collector/postgres-store.js';
import { SQLITE_MIGRATIONS, SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetPageQuery, FleetStore } from '../fleet/collector/store.js';
import { FLEET_PAGE_SORTS, MAX_FLEET_PAGE } from '../fleet/collector/store.js';
import type { TelemetryPoint } from '../protocol/index.js';
import { reportedStateSchema, telemetryBatchSchema } from '../protocol/index.js';
import { freshDatabase } from './helpers/postgres.js';
import { storeBackends } from './helpers/stores.js';

const NOW = Date.parse('2026-03-01T12:00:00.000Z');
const iso = (ms: number): string => new Date(ms).toISOString();
const GROUPS = ['lab', 'field', 'Edge-1'];
const MODELS = ['mnist', 'resnet', 'yolo', 'bert'];

/** A small seeded generator (mulberry32), so a failure can be replayed. */
function random(seed: number): { next(): number; int(n: number): number; pick<T>(xs: readonly T[]): T; chance(p: number): boolean } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return { next, int, pick: (xs) => xs[int(xs.length)] as never, chance: (p) => next() < p };
}

type Rng = ReturnType<typeof random>;
const ID_CHARS = 'abcXYZ019_.-';

function deviceId(rng: Rng, i: number): string {
  const first = 'aBcZ0'[rng.int(5)] as string;
  let rest = '';
  for (let n = rng.int(6); n > 0; n--) rest += ID_CHARS[rng.int(ID_CHARS.length)];
  return `${first}${rest}${i}`;
}

function state(device: string, rng: Rng, ts: number): ReturnType<typeof reportedStateSchema.parse> {
  return reportedStateSchema.parse({
    schema: 1, device, groups: GROUPS.filter(() => rng.chance(0.4)), ts: iso(ts),
    desired: { source: 'device', serial: 1, status: 'applied', error: null },
    models: MODELS.slice(0, 3).filter(() => rng.chance(0.4)).map((name) => ({
      name, version: 1, state: 'serving', labels: [], executionProvider: 'cpu', sha256: null, progress: 1, error: null,
    })),
    agent: { version: '0.1.0', arch: 'arm64', startedAt: iso(ts), executionProviders: { available: ['cpu'], unavailable: {} } },
  });
}

/** A telemetry batch at `ts`: inference points (p99 from a few values, so ties happen; some without latency), health, dropped. */
function points(rng: Rng, device: string, firstSeq: number, ts: number): TelemetryPoint[] {
  const raw: Record<string, unknown>[] = [];
  let seq = firstSeq;
  for (const model of MODELS.filter(() => rng.chance(0.35))) {
    const latency = rng.chance(0.2) ? null : { p50: 0.5, p90: 1, p99: rng.pick([1, 2.5, 5, 10, 40]), max: 50, mean: 1 };
    raw.push({ seq: seq++, ts: iso(ts), kind: 'inference', model, version: 1, intervalS: 10, count: 10, errors: rng.chance(0.3) ? rng.int(4) : 0, latencyMs: latency });
  }
  if (rng.chance(0.6)) {
    const outbox = rng.chance(0.5) ? { outboxRows: rng.int(100), outboxBytes: rng.int(100_000) } : {};
    raw.push({ seq: seq++, ts: iso(ts), kind: 'health', cpuPct: 1, load1: 0, memUsedBytes: 1, memTotalBytes: 2, tempC: null, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [], ...outbox });
  }
  if (rng.chance(0.2)) raw.push({ seq: seq++, ts: iso(ts), kind: 'dropped', count: 1 + rng.int(500), oldestSeq: 0, newestSeq: 0, reason: 'buffer full' });
  return telemetryBatchSchema.parse({ schema: 1, device, points: raw }).points;
}

/** Writes a random fleet through the store's write methods, as the collector does. */
async function writeFleet(store: FleetStore, rng: Rng, count: number, round: number): Promise<string[]> {
  const ids: string[] = [];
  const seqs = new Map<string, number>();
  // The collector's clock: arrival times never go back, and often tie.
  let clock = NOW + round * 3_600_000;
  const arrive = (): number => (clock += rng.int(3) * 500);
  for (let i = 0; i < count; i++) {
    const device = deviceId(random(i + 1), i);
    ids.push(device);
    if (rng.chance(0.7)) {
      const at = arrive();
      await store.upsertStatus(device, { online: rng.chance(0.6), ts: iso(at) }, at);
    }
    if (rng.chance(0.75)) {
      const at = arrive();
      // Now and then a state older than the stored one: it is not kept, and does not count as seen.
      await store.upsertState(state(device, rng, at - (rng.chance(0.2) ? 7_200_000 : rng.int(5) * 1000)), at);
    }
    for (let b = rng.int(3); b > 0; b--) {
      const seq = seqs.get(device) ?? round * 1000;
      const at = arrive();
      // An older batch now and then: the latest table keeps the newer point.
      const ts = at - (rng.chance(0.2) ? 7_200_000 : rng.int(10) * 1000);
      const batch = points(rng, device, seq + 1, ts);
      seqs.set(device, seq + 1 + batch.length);
      await store.insertPoints(device, batch, at);
    }
    if (rng.chance(0.05)) await store.addCounts(new Map([[device, { quarantined: 1 + rng.int(3), overQuota: rng.int(2), clockSkewed: 0 }]]));
  }
  // Devices known only by their counters (every message refused) still have a row.
  await store.addCounts(new Map([[`only-counted-${round}`, { quarantined: 2, overQuota: 0, clockSkewed: 1 }]]));
  return ids;
}

function randomQuery(rng: Rng, ids: readonly string[]): FleetPageQuery {
  const q: FleetPageQuery = { offset: rng.chance(0.3) ? 0 : rng.int(ids.length + 20), limit: rng.chance(0.1) ? 0 : 1 + rng.int(60) };
  if (rng.chance(0.9)) q.sort = rng.pick(FLEET_PAGE_SORTS);
  if (rng.chance(0.5)) q.desc = rng.chance(0.5);
  if (rng.chance(0.25)) q.group = rng.pick([...GROUPS, 'nobody']);
  if (rng.chance(0.25)) q.model = rng.pick([...MODELS, 'absent']);
  if (rng.chance(0.25)) q.online = rng.chance(0.5);
  if (rng.chance(0.2)) q.errors = rng.chance(0.5);
  if (rng.chance(0.15)) q.minP99 = rng.pick([0, 2.5, 7, 40, 100]);
  if (rng.chance(0.25)) {
    const id = rng.pick(ids);
    const from = rng.int(id.length);
    const part = id.slice(from, from + 1 + rng.int(3));
    q.search = rng.chance(0.5) ? part.toUpperCase() : part;
  }
  return q;
}

/** The same query as fleet-query.ts reads it (search lower-cased by its parser). */
function reference(q: FleetPageQuery): FleetQuery {
  const { offset = 0, limit = 100, sort = 'device', desc = false, search, ...filters } = q;
  return { offset, limit, sort, desc, ...filters, ...(search !== undefined && { search: search.toLowerCase() }) };
}

async function expectSameAsReference(store: FleetStore, rng: Rng, ids: readonly string[], queries: number): Promise<void> {
  const all = await store.fleetStatus();
  for (let i = 0; i < queries; i++) {
    const q = randomQuery(rng, ids);
    const want = pageFleet(all, reference(q));
    const got = await store.fleetPage(q);
    const query = JSON.stringify(q);
    expect({ total: got.total, online: got.online, devices: got.rows.map((r) => r.device) }, query).toEqual({
      total: want.total, online: want.online, devices: want.rows.map((r) => r.device),
    });
    expect(got.rows, query).toEqual(want.rows);
  }
}

const { backends, pgSkip, dir, server } = storeBackends('page');

it('the store and the API agree on the sorts', () => {
  expect([...FLEET_PAGE_SORTS]).toEqual([...FLEET_SORTS]);
});

for (const backend of backends) {
  describe.skipIf(backend.skip)(`fleetPage (${backend.name})`, () => {
    it('gives the rows, totals and order pageFleet gives over fleetStatus, for 300 random queries, before and after more writes', async () => {
      const store = await backend.open();
      await store.init();
      try {
        const rng = random(13);
        const ids = await writeFleet(store, rng, 250, 0);
        // Some devices drew nothing to send; the rest, and the counted-only one, have rows.
        expect((await store.fleetStatus()).length).toBeGreaterThan(200);
        await expectSameAsReference(store, rng, ids, 150);
        // More writes: statuses flip, new intervals replace errors and p99, older batches change nothing.
        await writeFleet(store, rng, 250, 1);
        await expectSameAsReference(store, rng, ids, 150);
      } finally {
        await store.close();
      }
    }, 120_000);

    it('an empty store, an offset past the end, and limit 0 (only the totals)', async () => {
      const store = await backend.open();
      await store.init();
      try {
        expect(await store.fleetPage({})).toEqual({ total: 0, online: 0, rows: [] });
        await store.upsertStatus('pi-1', { online: true }, NOW);
        await store.upsertStatus('pi-2', { online: false }, NOW);
        expect(await store.fleetPage({ offset: 5 })).toEqual({ total: 2, online: 1, rows: [] });
        expect(await store.fleetPage({ limit: 0 })).toEqual({ total: 2, online: 1, rows: [] });
        expect((await store.fleetPage({ sort: 'online', desc: true })).rows.map((r) => r.device)).toEqual(['pi-1', 'pi-2']);
      } finally {
        await store.close();
      }
    });

    it('refuses a bad query, naming each problem', async () => {
      const store = await backend.open();
      await store.init();
      try {
        await expect(store.fleetPage({ offset: -1, limit: MAX_FLEET_PAGE + 1, sort: 'name' as never, minP99: Number.NaN })).rejects.toThrow(
          `fleetPage: offset must be an integer 0 or more, got -1; limit must be an integer from 0 to ${MAX_FLEET_PAGE}, got ${MAX_FLEET_PAGE + 1}; ` +
            'sort must be one of device, lastSeen, online, errors, p99, dropped, got name; minP99 must be a number 0 or more, got NaN',
        );
        // A search with SQL pattern characters is text, not a pattern.
        await store.upsertStatus('a_b', { online: true }, NOW);
        await store.upsertStatus('axb', { online: true }, NOW);
        expect((await store.fleetPage({ search: '_' })).rows.map((r) => r.device)).toEqual(['a_b']);
        expect((await store.fleetPage({ search: "%' OR 1=1 --" })).total).toBe(0);
      } finally {
        await store.close();
      }
    });
  });
}

// ---- a database from before the summary (schema 2) is filled in by the migration ----

const V2_ROWS = {
  status: [
    ['old-1', true, NOW - 5000],
    ['old-2', false, NOW - 1000],
  ] as const,
  state: { device: 'old-1', groups: ['lab'] },
  latest: [
    ['old-1', 'inference/mnist', { seq: 1, ts: iso(NOW - 3000), kind: 'inference', model: 'mnist', version: 1, intervalS: 10, count: 5, errors: 2, latencyMs: { p50: 1, p90: 2, p99: 7, max: 9, mean: 1 } }],
    ['old-1', 'inference/yolo', { seq: 2, ts: iso(NOW - 3000), kind: 'inference', model: 'yolo', version: 1, intervalS: 10, count: 5, errors: 1, latencyMs: null }],
    ['old-3', 'health', { seq: 1, ts: iso(NOW - 2000), kind: 'health', cpuPct: 1, load1: 0, memUsedBytes: 1, memTotalBytes: 2, tempC: null, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [], outboxRows: 3, outboxBytes: 300 }],
  ] as const,
};

const v2State = reportedStateSchema.parse({
  schema: 1, device: 'old-1', groups: ['lab'], ts: iso(NOW - 4000),
  desired: null, models: [], agent: { version: '0.1.0', arch: 'arm64', startedAt: iso(NOW), executionProviders: { available: ['cpu'], unavailable: {} } },
});

async function expectMigrated(store: FleetStore): Promise<void> {
  await store.init();
  try {
    const all = await store.fleetStatus();
    expect(all.map((r) => r.device)).toEqual(['old-1', 'old-2', 'old-3']);
    for (const sort of FLEET_PAGE_SORTS) {
      for (const desc of [false, true]) {
        const want = pageFleet(all, reference({ sort, desc }));
        expect(await store.fleetPage({ sort, desc })).toEqual({ total: want.total, online: want.online, rows: want.rows });
      }
    }
    expect((await store.fleetPage({ sort: 'p99', desc: true })).rows.map((r) => r.device)).toEqual(['old-1', 'old-2', 'old-3']);
    expect((await store.fleetPage({ sort: 'lastSeen', desc: true })).rows.map((r) => r.device)).toEqual(['old-2', 'old-3', 'old-1']);
    expect((await store.fleetPage({ errors: true })).rows.map((r) => r.device)).toEqual(['old-1']);
    expect((await store.fleetPage({ group: 'lab' })).rows.map((r) => r.device)).toEqual(['old-1']);
  } finally {
    await store.close();
  }
}

describe('migration to the summary', () => {
  it('SQLite: fills online, last seen, errors and worst p99 from the rows already stored', async () => {
    const file = join(dir(), 'v2.db');
    const db = openSqlite(file, { migrations: SQLITE_MIGRATIONS.slice(0, 2), owner: 'collector' });
    for (const [device, online, at] of V2_ROWS.status) db.prepare('INSERT INTO fleet_status VALUES (?, ?, ?, ?)').run(device, online ? 1 : 0, at, at);
    db.prepare('INSERT INTO fleet_state VALUES (?, ?, ?, ?)').run('old-1', NOW - 4000, JSON.stringify(v2State), NOW - 4000);
    for (const [device, slot, data] of V2_ROWS.latest) {
      db.prepare('INSERT INTO fleet_latest (device, slot, ts, data, received_at) VALUES (?, ?, ?, ?, ?)').run(device, slot, Date.parse(data.ts), JSON.stringify(data), Date.parse(data.ts));
    }
    db.close();
    await expectMigrated(new SqliteStore(file));
  });

  it.skipIf(pgSkip)('PostgreSQL: the same', async () => {
    const url = await freshDatabase(server());
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      for (const sql of POSTGRES_MIGRATIONS.slice(0, 2)) await client.query(sql);
      await client.query('CREATE TABLE fleet_schema (version integer NOT NULL); INSERT INTO fleet_schema VALUES (2)');
      for (const [device, online, at] of V2_ROWS.status) await client.query('INSERT INTO fleet_status VALUES ($1, $2, $3, $3)', [device, online, new Date(at)]);
      await client.query('INSERT INTO fleet_state VALUES ($1, $2, $3, $2)', ['old-1', new Date(NOW - 4000), JSON.stringify(v2State)]);
      for (const [device, slot, data] of V2_ROWS.latest) {
        await client.query('INSERT INTO fleet_latest (device, slot, ts, data, received_at) VALUES ($1, $2, $3, $4, $3)', [device, slot, new Date(data.ts), JSON.stringify(data)]);
      }
    } finally {
      await client.end();
    }
    await expectMigrated(new PostgresStore(url));
  });
});
