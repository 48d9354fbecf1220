/**
 * Group commit on a real PostgreSQL (fleet/collector/pg-group-writer.ts):
 * writes that arrive together share transactions, one refused write
 * rejects alone while the rest of its group commits, a database that is
 * gone rejects every write, and the collector's store keeps every batch
 * of many devices written at once.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgGroupWriter } from '../fleet/collector/pg-group-writer.js';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import { telemetryBatchSchema } from '../protocol/index.js';
import { freshDatabase, postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './helpers/postgres.js';
import { freePort } from './helpers/child.js';

let server: PostgresServer | undefined;
const pgSkip = postgresSkipReason();
beforeAll(async () => {
  if (pgSkip === false) server = await startPostgres(postgresBin() as string);
}, 90_000);
afterAll(async () => {
  await server?.stop();
});

async function table(): Promise<{ pool: pg.Pool; commits: () => Promise<number> }> {
  const url = await freshDatabase(server as PostgresServer);
  const pool = new pg.Pool({ connectionString: url, max: 8 });
  await pool.query('CREATE TABLE t (device text NOT NULL, n integer NOT NULL CHECK (n >= 0), PRIMARY KEY (device, n))');
  const name = new URL(url).pathname.slice(1);
  return {
    pool,
    commits: async () => {
      // The statistics collector reports committed transactions, refreshed per query with a fresh snapshot.
      await pool.query('SELECT pg_stat_clear_snapshot()');
      const { rows } = await pool.query<{ n: string }>('SELECT xact_commit AS n FROM pg_stat_database WHERE datname = $1', [name]);
      return Number(rows[0]?.n);
    },
  };
}

const insert = (device: string, n: number) => async (db: pg.ClientBase | pg.Pool) => (await db.query('INSERT INTO t VALUES ($1, $2)', [device, n])).rowCount;

describe.skipIf(pgSkip)('PgGroupWriter', () => {
  it('600 writes at once commit in far fewer transactions, every row stored', async () => {
    const { pool, commits } = await table();
    try {
      const writer = new PgGroupWriter(pool, { groups: 2, maxWrites: 256 });
      const before = await commits();
      const results = await Promise.all(Array.from({ length: 600 }, (_, i) => writer.write(`d${i % 50}`, insert(`d${i % 50}`, i))));
      expect(results).toEqual(Array.from({ length: 600 }, () => 1));
      const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM t');
      expect(rows[0]?.n).toBe(600);
      expect(writer.stats.grouped).toBeGreaterThanOrEqual(590);
      expect(writer.stats.groups).toBeLessThanOrEqual(10);
      // Transactions the database saw, the count queries' own included: nowhere near one per write.
      const after = await commits();
      expect(after - before).toBeLessThan(30);
    } finally {
      await pool.end();
    }
  });

  it('a refused write rejects alone with its own error; the rest of its group commits', async () => {
    const { pool } = await table();
    try {
      const writer = new PgGroupWriter(pool, { groups: 1, maxWrites: 256 });
      // The first write holds the only group slot, so the next 20 queue and go together.
      const first = writer.write('a', insert('a', 0));
      const rest = Array.from({ length: 20 }, (_, i) => writer.write(`d${i}`, insert(`d${i}`, i === 7 ? -1 : i)));
      const settled = await Promise.allSettled([first, ...rest]);
      const refused = settled.flatMap((s, i) => (s.status === 'rejected' ? [{ i, message: (s.reason as Error).message }] : []));
      expect(refused).toEqual([{ i: 8, message: expect.stringContaining('violates check constraint') }]);
      const { rows } = await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM t');
      expect(rows[0]?.n).toBe(20);
      expect(writer.stats.retried).toBe(1);
    } finally {
      await pool.end();
    }
  });

  it('a database that cannot be reached rejects every write with the connection error', async () => {
    const pool = new pg.Pool({ host: '127.0.0.1', port: await freePort(), user: 'postgres', connectionTimeoutMillis: 2_000 });
    pool.on('error', () => undefined);
    try {
      const writer = new PgGroupWriter(pool, { groups: 1, maxWrites: 256 });
      const settled = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => writer.write(`d${i}`, insert(`d${i}`, i))));
      expect(settled.map((s) => s.status)).toEqual(Array.from({ length: 5 }, () => 'rejected'));
      for (const s of settled) expect(String((s as PromiseRejectedResult).reason)).toMatch(/ECONNREFUSED/);
    } finally {
      await pool.end();
    }
  });

  it("PostgresStore: 2,000 devices' batches, statuses and events written at once are all stored, in groups", async () => {
    const store = new PostgresStore(await freshDatabase(server as PostgresServer));
    await store.init();
    try {
      const ts = '2026-03-01T12:00:00.000Z';
      const batch = (seq: number) =>
        telemetryBatchSchema.parse({
          schema: 1, device: 'x',
          points: [{ seq, ts, kind: 'inference', model: 'm', version: 1, intervalS: 10, count: 5, errors: seq % 2, latencyMs: { p50: 1, p90: 2, p99: seq, max: seq, mean: 1 } }],
        }).points;
      const at = Date.parse(ts);
      await Promise.all(
        Array.from({ length: 2_000 }, (_, i) => [
          store.insertPoints(`dev-${i}`, batch(1), at),
          store.upsertStatus(`dev-${i}`, { online: true, ts, agentVersion: '1' } as never, at),
          store.insertEvent(`dev-${i}`, { ts, type: 'model.activated', model: 'm', version: 1 }, at),
        ]).flat(),
      );
      const page = await store.fleetPage({ limit: 10, sort: 'p99', desc: true });
      expect(page).toMatchObject({ total: 2_000, online: 2_000 });
      expect(page.rows[0]?.inference[0]).toMatchObject({ model: 'm', errors: 1 });
      expect((await store.events('dev-1999', { from: at - 1, to: at + 1 })).map((e) => e.type)).toEqual(['model.activated']);
    } finally {
      await store.close();
    }
  });
});
