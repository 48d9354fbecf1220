/**
 * FleetStore.acknowledge, the store half of section 12: the prefix walk
 * (start below the first batch, gaps hold it, 'dropped' ranges pass it,
 * never down), many devices in one pass, and two stores on one PostgreSQL
 * acknowledging while both insert: every value either returns is true (all
 * seqs up to it stored or dropped), and neither ever sees it go down.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import type { FleetStore } from '../fleet/collector/store.js';
import type { TelemetryPoint } from '../protocol/index.js';
import { telemetryBatchSchema } from '../protocol/index.js';
import { freshDatabase } from './helpers/postgres.js';
import { storeBackends } from './helpers/stores.js';

const NOW = Date.parse('2026-03-01T12:00:00.000Z');
const iso = (ms: number): string => new Date(ms).toISOString();
const health = (seq: number): Record<string, unknown> => ({
  seq, ts: iso(NOW), kind: 'health', cpuPct: 1, load1: 0, memUsedBytes: 1, memTotalBytes: 2, tempC: null, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [],
});
const dropped = (seq: number, oldestSeq: number, newestSeq: number): Record<string, unknown> => ({
  seq, ts: iso(NOW), kind: 'dropped', count: newestSeq - oldestSeq + 1, oldestSeq, newestSeq, reason: 'buffer full',
});
const points = (raw: Record<string, unknown>[]): TelemetryPoint[] => telemetryBatchSchema.parse({ schema: 1, device: 'x', points: raw }).points;
const ack = async (store: FleetStore, device: string, firstSeq: number): Promise<number | undefined> => (await store.acknowledge(new Map([[device, firstSeq]]))).get(device);

const { backends, pgSkip, server } = storeBackends('ack');

for (const backend of backends) {
  describe.skipIf(backend.skip)(`acknowledge (${backend.name})`, () => {
    it('starts below the first batch, holds at a gap, passes a dropped range, never goes down', async () => {
      const store = await backend.open();
      await store.init();
      try {
        await store.insertPoints('pi', points([health(10), health(11)]), NOW);
        expect(await ack(store, 'pi', 10)).toBe(11);
        await store.insertPoints('pi', points([health(14)]), NOW);
        expect(await ack(store, 'pi', 14)).toBe(11); // 12 and 13 missing
        // A dropped point accounts for seqs below its own; the walk jumps over its range.
        await store.insertPoints('pi', points([health(12), dropped(15, 13, 13)]), NOW);
        expect(await ack(store, 'pi', 12)).toBe(15);
        // A range reaching beyond what is stored passes to its end, then goes on from there.
        await store.insertPoints('pi', points([dropped(30, 16, 25), health(26)]), NOW);
        expect(await ack(store, 'pi', 26)).toBe(26);
        // A redelivered old batch (or a lower first seq) never takes it back.
        await store.insertPoints('pi', points([health(10)]), NOW);
        expect(await ack(store, 'pi', 1)).toBe(26);
        expect(await store.acknowledge(new Map())).toEqual(new Map());
      } finally {
        await store.close();
      }
    });

    it('a device far behind (12,001 points above its prefix, more than one read) is acknowledged to the end in one pass', async () => {
      const store = await backend.open();
      await store.init();
      try {
        for (let from = 1; from <= 12_001; from += 1000) {
          const seqs = Array.from({ length: Math.min(1000, 12_002 - from) }, (_, k) => from + k);
          await store.insertPoints('pi-far', points(seqs.map(health)), NOW);
        }
        expect(await ack(store, 'pi-far', 1)).toBe(12_001);
        // And a gap past the first read still holds it.
        await store.insertPoints('pi-gap', points(Array.from({ length: 6000 }, (_, k) => health(k + 1)).filter((_, k) => k !== 5500)), NOW);
        expect(await ack(store, 'pi-gap', 1)).toBe(5500);
      } finally {
        await store.close();
      }
    });

    it('one pass for 500 devices gives each its own prefix', async () => {
      const store = await backend.open();
      await store.init();
      try {
        const pending = new Map<string, number>();
        for (let i = 0; i < 500; i++) {
          const device = `pi-${i}`;
          // Device i has seqs 100..(100+i%5), then a gap, then 200.
          await store.insertPoints(device, points([...Array.from({ length: 1 + (i % 5) }, (_, k) => health(100 + k)), health(200)]), NOW);
          pending.set(device, 100);
        }
        const started = performance.now();
        const acked = await store.acknowledge(pending);
        const ms = performance.now() - started;
        expect(acked.size).toBe(500);
        for (let i = 0; i < 500; i++) expect(acked.get(`pi-${i}`)).toBe(100 + (i % 5));
        expect(ms).toBeLessThan(5000);
      } finally {
        await store.close();
      }
    });
  });
}

describe.skipIf(pgSkip)('two stores on one PostgreSQL', () => {
  it('acknowledging while both insert, in any order: every value returned is true, and neither sees one go down', async () => {
    const url = await freshDatabase(server());
    const stores = [new PostgresStore(url), new PostgresStore(url)] as const;
    for (const s of stores) await s.init();
    try {
      const devices = Array.from({ length: 20 }, (_, i) => `pi-${i}`);
      /** Seqs whose insert has begun: nothing above their contiguous prefix can be stored yet. */
      const begun = new Map(devices.map((d) => [d, new Set<number>()]));
      const prefix = (set: ReadonlySet<number>): number => {
        let n = 0;
        while (set.has(n + 1)) n++;
        return n;
      };
      let checked = 0;
      // Each device's seqs 1..60, shuffled, in batches of 3: the even batches through one store, the odd through the other, at once.
      const work = devices.flatMap((device, d) => {
        const seqs = Array.from({ length: 60 }, (_, k) => k + 1);
        for (let k = seqs.length - 1; k > 0; k--) {
          const j = (k * 7919 + d * 31) % (k + 1);
          [seqs[k], seqs[j]] = [seqs[j] as number, seqs[k] as number];
        }
        // Two writers per store and device: walks overlap within a store and across both.
        return [0, 1, 2, 3].map(async (worker) => {
          const which = worker % 2;
          const store = stores[which] as PostgresStore;
          let last = -1;
          for (let b = worker; b < 20; b += 4) {
            const batch = seqs.slice(b * 3, b * 3 + 3);
            for (const seq of batch) begun.get(device)?.add(seq);
            await store.insertPoints(device, points(batch.map(health)), NOW);
            // Started at 1, as an agent's first batch would.
            const upTo = (await store.acknowledge(new Map([[device, 1]]))).get(device) as number;
            expect(upTo, `${device}: store ${which} saw it go down`).toBeGreaterThanOrEqual(last);
            expect(upTo, `${device}: ${upTo} vouches for a seq not stored`).toBeLessThanOrEqual(prefix(begun.get(device) as Set<number>));
            last = upTo;
            checked++;
          }
        });
      });
      // A third connection watches the stored prefixes the whole time: none may ever go down.
      const watcher = new pg.Client({ connectionString: url });
      await watcher.connect();
      const watched = new Map<string, number>();
      let drops = 0;
      let watching = true;
      const watch = (async () => {
        while (watching) {
          const { rows } = await watcher.query<{ device: string; up: number }>('SELECT device, ack_up_to::float8 AS up FROM fleet_devices WHERE ack_up_to IS NOT NULL');
          for (const r of rows) {
            if (r.up < (watched.get(r.device) ?? -1)) drops++;
            watched.set(r.device, Math.max(r.up, watched.get(r.device) ?? -1));
          }
        }
      })();
      await Promise.all(work);
      watching = false;
      await watch;
      await watcher.end();
      expect(drops, 'stored prefixes seen going down').toBe(0);
      expect(checked).toBe(20 * 20);
      const final = await stores[0].acknowledge(new Map(devices.map((d) => [d, 1])));
      for (const device of devices) expect(final.get(device)).toBe(60);
    } finally {
      for (const s of stores) await s.close();
    }
  }, 60_000);
});
