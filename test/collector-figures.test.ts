/**
 * Section 13 figures in the store (issue 13 item 3): 'dropped' points summed
 * once each (a redelivered batch adds nothing), their last arrival, the
 * outbox of the newest health point, and both through series() too, on
 * SQLite and a real PostgreSQL.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetStore } from '../fleet/collector/store.js';
import { telemetryBatchSchema } from '../protocol/index.js';
import type { TelemetryPoint } from '../protocol/index.js';
import { freshDatabase, postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './helpers/postgres.js';

const NOW = Date.parse('2026-03-01T12:00:00.000Z');
const iso = (ms: number): string => new Date(ms).toISOString();

const points = (raw: Record<string, unknown>[]): TelemetryPoint[] => telemetryBatchSchema.parse({ schema: 1, device: 'pi-1', points: raw }).points;
const health = (seq: number, ts: number, outbox?: [number, number]): Record<string, unknown> => ({
  seq, ts: iso(ts), kind: 'health', cpuPct: 1, load1: 0, memUsedBytes: 1, memTotalBytes: 2, tempC: null, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [],
  ...(outbox && { outboxRows: outbox[0], outboxBytes: outbox[1] }),
});
const dropped = (seq: number, ts: number, count: number, oldestSeq: number, newestSeq: number, reason = 'buffer full'): Record<string, unknown> => ({
  seq, ts: iso(ts), kind: 'dropped', count, oldestSeq, newestSeq, reason,
});
// The agent's older field names, read under the new ones (protocol revision 2).
const droppedOld = (seq: number, ts: number): Record<string, unknown> => ({ seq, ts: iso(ts), kind: 'dropped', count: 3, fromSeq: 40, toSeq: 42 });

let dir: string;
let server: PostgresServer | undefined;
const pgSkip = postgresSkipReason();
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-figures-'));
  if (pgSkip === false) server = await startPostgres(postgresBin() as string);
}, 90_000);
afterAll(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

const backends: { name: string; skip: string | false; open(): Promise<FleetStore> }[] = [
  { name: 'SQLite', skip: false, open: async () => new SqliteStore(join(dir, 'figures.db')) },
  { name: 'PostgreSQL', skip: pgSkip, open: async () => new PostgresStore(await freshDatabase(server as PostgresServer)) },
];

for (const backend of backends) {
  describe.skipIf(backend.skip)(`section 13 figures (${backend.name})`, () => {
    it('dropped points are summed once each, with the last arrival; the outbox is the newest health point\'s; series carry both', async () => {
      const store = await backend.open();
      await store.init();
      try {
        const first = points([health(1, NOW, [10, 1000]), dropped(2, NOW, 100, 0, 99)]);
        expect(await store.insertPoints('pi-1', first, NOW + 5)).toBe(2);
        // Redelivered: stored once, counted once.
        expect(await store.insertPoints('pi-1', first, NOW + 6)).toBe(0);
        expect(await store.insertPoints('pi-1', points([health(43, NOW + 30_000, [2, 200]), droppedOld(44, NOW + 30_000)]), NOW + 30_005)).toBe(2);
        // An older health point arriving late does not replace the newest one's outbox.
        expect(await store.insertPoints('pi-1', points([health(3, NOW - 60_000, [999, 99_999])]), NOW + 30_010)).toBe(1);
        const [row] = await store.fleetStatus();
        expect(row).toMatchObject({ device: 'pi-1', dropped: { count: 103, lastAt: iso(NOW + 30_005) }, outbox: { rows: 2, bytes: 200 } });
        expect((await store.fleetPage({ sort: 'dropped', desc: true })).rows[0]?.dropped).toEqual({ count: 103, lastAt: iso(NOW + 30_005) });

        const series = await store.series('pi-1', { from: NOW - 120_000, to: NOW + 60_000 });
        expect(series.dropped).toEqual([
          { ts: iso(NOW), count: 100, oldestSeq: 0, newestSeq: 99, reason: 'buffer full' },
          { ts: iso(NOW + 30_000), count: 3, oldestSeq: 40, newestSeq: 42, reason: 'buffer full' },
        ]);
        expect(series.health.map((h) => [h.outboxRows, h.outboxBytes])).toEqual([[999, 99_999], [10, 1000], [2, 200]]);

        // A health point without the figures: none in the sample, null outbox on the row.
        await store.insertPoints('pi-2', points([health(1, NOW)]), NOW);
        expect((await store.series('pi-2', { from: 0, to: NOW + 1 })).health[0]).not.toHaveProperty('outboxRows');
        expect((await store.fleetPage({ search: 'pi-2' })).rows[0]).toMatchObject({ outbox: null, dropped: { count: 0, lastAt: null } });
      } finally {
        await store.close();
      }
    });
  });
}
