import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SHADOW_DEFAULTS, type Shadow } from '../protocol/desired.js';
import type { Timed } from '../agent/runtime/batcher.js';
import type { HostTensor } from '../agent/runtime/tensor.js';
import type { Servable } from '../agent/serving/servable.js';
import { ShadowEvaluation } from '../agent/serving/shadow/evaluation.js';
import { ShadowTap } from '../agent/serving/shadow/tap.js';
import type { NewPoint } from '../agent/telemetry/points.js';

const logger = pino({ level: 'silent' });
const tensor = (data: number[]): HostTensor => ({ name: 'y', datatype: 'FP32', shape: [1, data.length], data: Float32Array.from(data) });
const served = (data: number[]): Timed<HostTensor[]> => ({ value: [tensor(data)], queueMs: 0.1, computeMs: 0.4 });

/** A candidate whose runs the test settles by hand. */
function fakeCandidate(): { servable: Servable; pending: ((data: number[] | Error) => void)[]; held: () => number } {
  const pending: ((data: number[] | Error) => void)[] = [];
  let held = 0;
  const servable = {
    name: 'm',
    version: 2,
    acquire: () => held++,
    release: () => held--,
    infer: () =>
      new Promise<Timed<HostTensor[]>>((resolve, reject) =>
        pending.push((d) => (d instanceof Error ? reject(d) : resolve({ value: [tensor(d)], queueMs: 0, computeMs: 1 }))),
      ),
  } as unknown as Servable;
  return { servable, pending, held: () => held };
}

const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

function evaluation(spec: Partial<Shadow>, candidate: Servable, points: NewPoint[] = []): ShadowEvaluation {
  return new ShadowEvaluation({
    name: 'm', version: 2, baseVersion: 1, candidate, spec: { ...SHADOW_DEFAULTS, sampleRate: 1, ...spec },
    sink: { append: (p) => points.push(...p) }, intervalS: 1, logger,
  });
}

describe('ShadowEvaluation', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'setInterval', 'clearTimeout', 'clearInterval'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('runs one sample at a time and skips what comes while the candidate is busy', async () => {
    const c = fakeCandidate();
    const points: NewPoint[] = [];
    const e = evaluation({ minSamples: 2 }, c.servable, points);
    e.offer([], undefined, served([1, 2]));
    e.offer([], undefined, served([1, 2]));
    e.offer([], undefined, served([1, 2]));
    expect(c.pending).toHaveLength(1);
    expect(c.held()).toBe(1);
    c.pending[0]?.([0, 5]);
    await flush();
    expect(c.held()).toBe(0);
    e.offer([], undefined, served([3, 1]));
    c.pending[1]?.([9, 1]);
    const outcome = await e.done;
    expect(outcome).toMatchObject({ verdict: 'activated', samples: 2, agreed: 2, agreement: 1 });
    expect(points.at(-1)).toMatchObject({ kind: 'shadow', samples: 2, agreed: 2, verdict: 'activated', skipped: 2, maxAbsDiff: 6, baseVersion: 1 });
  });

  it('rejects below minAgreement, counting a failed candidate run as a disagreement', async () => {
    const c = fakeCandidate();
    const e = evaluation({ minSamples: 2, minAgreement: 0.75 }, c.servable);
    e.offer([], undefined, served([1, 2]));
    c.pending[0]?.([1, 2]);
    await flush();
    e.offer([], undefined, served([1, 2]));
    c.pending[1]?.(new Error('boom'));
    const outcome = await e.done;
    expect(outcome).toMatchObject({ verdict: 'rejected', samples: 2, agreed: 1, agreement: 0.5 });
    expect(outcome.reason).toBe('agreement 0.5 (1 of 2 samples, compare argmax) is below minAgreement 0.75');
  });

  it('samples at sampleRate', () => {
    const c = fakeCandidate();
    const draws = [0.05, 0.5, 0.09];
    const e = new ShadowEvaluation({
      name: 'm', version: 2, baseVersion: 1, candidate: c.servable, spec: { ...SHADOW_DEFAULTS, sampleRate: 0.1 }, sink: undefined, intervalS: 1, logger,
      random: () => draws.shift() ?? 1,
    });
    e.offer([], undefined, served([1]));
    expect(c.pending).toHaveLength(1);
    c.pending[0]?.([1]);
    e.cancel('test');
  });

  it('points every interval while it runs, then the timeout decides (onTimeout)', async () => {
    const points: NewPoint[] = [];
    const e = evaluation({ minSamples: 100, maxDurationS: 3.5, onTimeout: 'activate' }, fakeCandidate().servable, points);
    await vi.advanceTimersByTimeAsync(3000);
    expect(points.map((p) => (p as { verdict: unknown }).verdict)).toEqual([null, null, null]);
    expect(points[0]).toMatchObject({ samples: 0, agreement: null, latencyMs: null, maxAbsDiff: null });
    await vi.advanceTimersByTimeAsync(600);
    const outcome = await e.done;
    expect(outcome.verdict).toBe('activated');
    expect(outcome.reason).toMatch(/0 of 100 samples in maxDurationS 3.5 s \(agreement none\); onTimeout activate/);
    expect(points).toHaveLength(4);
    await vi.advanceTimersByTimeAsync(5000);
    expect(points).toHaveLength(4);
  });

  it('a cancelled evaluation makes no verdict point and ignores a run still in flight', async () => {
    const c = fakeCandidate();
    const points: NewPoint[] = [];
    const e = evaluation({ minSamples: 1 }, c.servable, points);
    e.offer([], undefined, served([1]));
    e.cancel('newer document');
    expect((await e.done).verdict).toBe('cancelled');
    c.pending[0]?.([1]);
    await flush();
    expect(points).toEqual([]);
    expect(c.held()).toBe(0);
  });
});

describe('ShadowTap', () => {
  it("offers only the base version's answers to the evaluation of that model", () => {
    const c = fakeCandidate();
    const tap = new ShadowTap({ sink: undefined, intervalS: 10, logger });
    const e = tap.begin({ name: 'm', version: 2, baseVersion: 1, candidate: c.servable, spec: { ...SHADOW_DEFAULTS, sampleRate: 1 } });
    tap.offer({ name: 'm', version: 3 } as Servable, [], undefined, served([1]));
    tap.offer({ name: 'other', version: 1 } as Servable, [], undefined, served([1]));
    expect(c.pending).toHaveLength(0);
    tap.offer({ name: 'm', version: 1 } as Servable, [], undefined, served([1]));
    expect(c.pending).toHaveLength(1);
    expect(tap.evaluationOf('m')).toBe(e);
    e.cancel('test');
  });
});
