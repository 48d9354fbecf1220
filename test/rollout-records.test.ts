/**
 * Rollout records on both stores (fleet/collector/rollout-records.ts): a
 * step and the documents it asks for are written together or not at all,
 * revisions guard against two writers, a serial is never recorded twice for
 * a target, what is recorded and not published comes back after a restart,
 * the gates' intervals come from the stored points, and exactly one
 * collector leads (a lapsing lease on SQLite, a session lock on PostgreSQL).
 */
import { describe, expect, it } from 'vitest';
import { RevisionConflict } from '../fleet/collector/rollout-records.js';
import { newRollout, parseWaves, type Rollout } from '../fleet/rollout/planner.js';
import { telemetryBatchSchema } from '../protocol/index.js';
import { storeBackends } from './helpers/stores.js';

const envelope = { payloadType: 't', payload: '', signatures: [] };
const T0 = Date.parse('2026-12-01T10:00:00Z');

function record(id: string, createdAt = T0): Rollout {
  return newRollout(id, {
    group: 'lab', models: [{ name: 'm', version: 2, labels: [], manifest: envelope }], waves: parseWaves('1,100%'), canary: [],
    minApplied: 1, applyTimeoutMs: 60_000, soakMs: 0, maxErrorRate: 0.01, maxP99Increase: 0.25, p99SlackMs: 1, minRequests: 10,
    shadow: null, onFailure: 'rollback', documentTtlMs: 86_400_000,
  }, ['a', 'b', 'c'], createdAt);
}
const doc = (target: string, serial: number | null) => ({ target, serial, payload: Buffer.from(serial === null ? '' : `${target}@${serial}`) });

const { backends } = storeBackends('records');

for (const backend of backends) {
  describe.skipIf(backend.skip)(`rollout records (${backend.name})`, () => {
    it('a step and its documents are written together; revisions and serials are never written twice', async () => {
      const store = (await backend.fresh())();
      await store.init();
      try {
        const r = record('r1');
        await store.rollouts.save(r, null);
        await expect(store.rollouts.save(r, null)).rejects.toThrow(new RevisionConflict('r1', null));
        const next = { ...r, phase: 'apply' as const, revision: 2 };
        await store.rollouts.save(next, 1, [doc('device:a', 5), doc('device:b', 3)]);
        await expect(store.rollouts.save({ ...next, revision: 3 }, 1)).rejects.toThrow('rollout r1 changed since revision 1 was read');
        // The same serial for a target again: the whole step is refused, nothing of it written.
        await expect(store.rollouts.save({ ...next, phase: 'soak', revision: 3 }, 2, [doc('device:c', 1), doc('device:a', 5)])).rejects.toThrow();
        expect((await store.rollouts.load('r1'))?.revision).toBe(2);
        expect((await store.rollouts.pending('r1')).map((p) => `${p.target}@${p.serial}`)).toEqual(['device:a@5', 'device:b@3']);

        const pending = await store.rollouts.pending('r1');
        expect(pending[0]?.payload.toString()).toBe('device:a@5');
        expect(await store.rollouts.unpublished()).toEqual(['r1']);
        await store.rollouts.markPublished([pending[0]?.id as number]);
        expect((await store.rollouts.pending('r1')).map((p) => p.target)).toEqual(['device:b']);
        // A removal has no serial; several may be recorded for one target.
        await store.rollouts.save({ ...next, revision: 3 }, 2, [doc('device:a', null), doc('device:b', null), doc('group:lab', 9)]);
        await store.rollouts.save({ ...next, revision: 4 }, 3, [doc('device:a', null)]);
        expect(await store.rollouts.lastSerials(['device:a', 'device:b', 'group:lab', 'device:z'])).toEqual(new Map([['device:a', 5], ['device:b', 3], ['group:lab', 9]]));
        expect(await store.rollouts.deviceSerials('r1')).toEqual(new Map([['a', 5], ['b', 3]]));
      } finally {
        await store.close();
      }
    });

    it('lists newest first, active ones alone when asked; the record survives a reopen unchanged', async () => {
      const open = await backend.fresh();
      let store = open();
      await store.init();
      await store.rollouts.save(record('old', T0), null);
      await store.rollouts.save({ ...record('done', T0 + 1000), status: 'succeeded' }, null);
      await store.rollouts.save(record('new', T0 + 2000), null);
      await store.rollouts.save({ ...record('new', T0 + 2000), revision: 2 }, 1, [doc('device:a', 1)]);
      await store.close();
      store = open();
      await store.init();
      try {
        expect((await store.rollouts.list()).map((r) => r.id)).toEqual(['new', 'done', 'old']);
        expect((await store.rollouts.list({ active: true })).map((r) => r.id)).toEqual(['new', 'old']);
        expect((await store.rollouts.list({ limit: 1 })).map((r) => r.id)).toEqual(['new']);
        expect(await store.rollouts.load('old')).toEqual(record('old', T0));
        expect(await store.rollouts.load('nope')).toBeUndefined();
        // Recorded before the "crash", still to publish after it.
        expect((await store.rollouts.pending('new')).map((p) => p.target)).toEqual(['device:a']);
      } finally {
        await store.close();
      }
    });

    it("the gates' intervals and shadow figures are the stored points of the devices asked for, from the time given", async () => {
      const store = (await backend.fresh())();
      await store.init();
      try {
        const point = (seq: number, ts: number, version: number) => ({
          seq, ts: new Date(ts).toISOString(), kind: 'inference', model: 'm', version, intervalS: 10, count: 40, errors: 1,
          latencyMs: { p50: 1, p90: 2, p99: 3 + seq, max: 9, mean: 1 },
        });
        const batch = (points: object[]) => telemetryBatchSchema.parse({ schema: 1, device: 'x', points }).points;
        await store.insertPoints('a', batch([point(1, T0 - 60_000, 1), point(2, T0 + 10_000, 2)]), T0 + 10_000);
        await store.insertPoints('b', batch([point(1, T0 + 10_000, 1)]), T0 + 10_000);
        await store.insertPoints('z', batch([point(1, T0 + 10_000, 1)]), T0 + 10_000);
        const shadow = { seq: 3, ts: new Date(T0 + 20_000).toISOString(), kind: 'shadow', model: 'm', version: 2, baseVersion: 1, samples: 200, agreed: 197, agreement: 0.985, maxAbsDiff: 0.01, latencyMs: { p50: 1, p99: 2 }, baseLatencyMs: { p50: 1, p99: 2 }, verdict: 'activated' };
        await store.insertPoints('a', batch([shadow]), T0 + 20_000);
        expect(await store.rollouts.shadows(['a', 'b'], T0)).toEqual([{ device: 'a', model: 'm', version: 2, ts: T0 + 20_000, samples: 200, agreed: 197, verdict: 'activated' }]);
        expect(await store.rollouts.shadows(['a'], T0 + 30_000)).toEqual([]);
        const got = (await store.rollouts.intervals(['a', 'b'], T0)).sort((x, y) => x.device.localeCompare(y.device));
        expect(got).toEqual([
          { device: 'a', model: 'm', version: 2, ts: T0 + 10_000, count: 40, errors: 1, p99: 5 },
          { device: 'b', model: 'm', version: 1, ts: T0 + 10_000, count: 40, errors: 1, p99: 4 },
        ]);
      } finally {
        await store.close();
      }
    });

    it('one collector leads at a time; the lead passes on when its holder resigns or goes', async () => {
      const open = await backend.fresh();
      const a = open();
      const b = open();
      await a.init();
      await b.init();
      try {
        expect(await a.rollouts.lead('collector-a', 60_000)).toBe(true);
        expect(await a.rollouts.lead('collector-a', 60_000)).toBe(true);
        expect(await b.rollouts.lead('collector-b', 60_000)).toBe(false);
        await a.rollouts.resign('collector-a');
        expect(await b.rollouts.lead('collector-b', 60_000)).toBe(true);
        expect(await a.rollouts.lead('collector-a', 60_000)).toBe(false);
        if (backend.name === 'SQLite') {
          // A holder that stops renewing loses the lease when it lapses.
          expect(await b.rollouts.lead('collector-b', 1)).toBe(true);
          await new Promise((r) => setTimeout(r, 20));
          expect(await a.rollouts.lead('collector-a', 60_000)).toBe(true);
        } else {
          // The lock is the holder's session: closing it (a crash drops it the same way) frees it.
          await b.close();
          expect(await a.rollouts.lead('collector-a', 60_000)).toBe(true);
        }
      } finally {
        await a.close();
        if (backend.name === 'SQLite') await b.close();
      }
    });
  });
}
