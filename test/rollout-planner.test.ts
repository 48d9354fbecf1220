/**
 * The staged-rollout planner (fleet/rollout/planner.ts), pure: wave plans,
 * every step of a wave, the gates on noisy data, failures, and what the
 * command line asks for.
 */
import { describe, expect, it } from 'vitest';
import type { DeviceView, Interval, Observation, Rollout, RolloutSpec } from '../fleet/rollout/planner.js';
import { CLEAR_SETTLE_MS, evaluateGates, newRollout, parseWaves, planWaves, step, waveTargets, weightedMedianP99 } from '../fleet/rollout/planner.js';
import { falseAlarmRate } from './helpers/rollout-noise.js';

const envelope = { payloadType: 't', payload: '', signatures: [] };
const T0 = Date.parse('2026-12-01T10:00:00Z');
const MIN = 60_000;

function spec(over: Partial<RolloutSpec> = {}): RolloutSpec {
  return {
    group: 'lab', models: [{ name: 'mnist', version: 4, labels: ['stable'], manifest: envelope }], waves: parseWaves('1,50%,100%'), canary: [],
    minApplied: 1, applyTimeoutMs: 15 * MIN, soakMs: 10 * MIN, maxErrorRate: 0.01, maxP99Increase: 0.25, p99SlackMs: 1, minRequests: 100,
    shadow: null, onFailure: 'rollback', documentTtlMs: 86_400_000, ...over,
  };
}

const devices = Array.from({ length: 10 }, (_, i) => `pi-${String(i).padStart(2, '0')}`);

function started(over: Partial<RolloutSpec> = {}): Rollout {
  const r = newRollout('r1', spec(over), devices, T0);
  r.previous = [{ name: 'mnist', version: 3, labels: ['stable'], manifest: envelope }];
  return r;
}

/** Reported state: on version `v` from its own document at `serial`, or from the group. */
function view(v: number, serial?: number, over: Partial<DeviceView> = {}): DeviceView {
  return {
    online: true,
    desired: serial === undefined ? { source: 'group', group: 'lab', serial: 7, status: 'applied', error: null } : { source: 'device', serial, status: 'applied', error: null },
    models: [{ name: 'mnist', version: v, state: 'serving', labels: ['stable'], executionProvider: 'cpu', sha256: null, progress: 1, error: null }],
    ...over,
  };
}

function observe(now: number, r: Rollout, onNew: readonly string[], intervals: Interval[] = [], over: Record<string, DeviceView> = {}): Observation {
  const given = r.waves.filter((w) => w.startedAt !== null).flatMap((w) => w.devices);
  const published = new Map(given.map((d) => [d, 1]));
  const views = new Map(devices.map((d) => [d, over[d] ?? (onNew.includes(d) ? view(4, 1) : view(3))]));
  return { now, devices: views, published, intervals };
}

/** Ten-second intervals for `device` from `from` to `to` at p99 `p99` (a function of time for noise). */
function series(device: string, version: number, from: number, to: number, p99: number | ((ts: number) => number), count = 50, errors = 0): Interval[] {
  const out: Interval[] = [];
  for (let ts = from + 10_000; ts <= to; ts += 10_000) out.push({ device, model: 'mnist', version, ts, count, errors, p99: typeof p99 === 'number' ? p99 : p99(ts) });
  return out;
}

describe('wave plans', () => {
  it('parses counts and shares, cumulative; bad sizes say what is wrong', () => {
    expect(parseWaves('1,10%,50%,100%')).toEqual([{ count: 1 }, { percent: 10 }, { percent: 50 }, { percent: 100 }]);
    expect(() => parseWaves('1,0%')).toThrow('wave "0%" must be a share above 0% and at most 100%');
    expect(() => parseWaves('1,abc')).toThrow('wave "abc" must be a device count');
    expect(() => parseWaves('0')).toThrow('device count (1 or more)');
  });

  it('wave targets grow by at least one device and the last takes everyone', () => {
    expect(waveTargets(parseWaves('1,10%,50%,100%'), 200)).toEqual([1, 20, 100, 200]);
    expect(waveTargets(parseWaves('1,10%,50%,100%'), 3)).toEqual([1, 2, 3, 3]);
    expect(waveTargets(parseWaves('5'), 3)).toEqual([3]);
  });

  it('every device once, canaries first, the order stable for an id and different for another', () => {
    const fleet = Array.from({ length: 200 }, (_, i) => `dev-${i}`);
    const a = planWaves('rollout-a', fleet, parseWaves('1,10%,50%,100%'), ['dev-7', 'dev-9']);
    expect(a[0]).toEqual(['dev-7', 'dev-9']);
    expect(a.flat().sort()).toEqual([...fleet].sort());
    expect(a.map((w) => w.length)).toEqual([2, 1, 19, 79, 99]);
    expect(planWaves('rollout-a', [...fleet].reverse(), parseWaves('1,10%,50%,100%'), ['dev-7', 'dev-9'])).toEqual(a);
    const b = planWaves('rollout-b', fleet, parseWaves('1,10%,50%,100%'), ['dev-7', 'dev-9']);
    expect(b[1]).not.toEqual(a[1]);
  });
});

describe('a wave step by step', () => {
  it('publishes the wave, waits for it to apply, soaks, passes, and ends with the group document then the removals', () => {
    let r = started();
    let s = step(r, observe(T0, r, []));
    expect(s.actions).toEqual([{ kind: 'devices', devices: r.waves[0]?.devices, models: 'new' }]);
    expect(s.rollout).toMatchObject({ phase: 'apply', revision: 2 });
    r = s.rollout;
    const wave1 = r.waves[0]?.devices ?? [];

    // Not applied yet: nothing to do.
    s = step(r, observe(T0 + 1000, r, []));
    expect(s.actions).toEqual([]);
    expect(s.rollout.phase).toBe('apply');
    r = s.rollout;

    s = step(r, observe(T0 + 5000, r, wave1));
    expect(s.rollout.phase).toBe('soak');
    r = s.rollout;
    // Soaking: no verdict before the soak is over.
    expect(step(r, observe(T0 + 5000 + 5 * MIN, r, wave1)).rollout).toBe(r);

    const end = T0 + 5000 + 10 * MIN;
    const data = [...series(wave1[0] as string, 3, T0 - 11 * MIN, T0, 2), ...series(wave1[0] as string, 4, T0 + 5000, end, 2.1)];
    s = step(r, observe(end, r, wave1, data));
    expect(s.rollout.waves[0]?.outcome).toBe('passed');
    expect(s.rollout.waves[0]?.gates.map((g) => [g.name, g.ok])).toEqual([['applied', true], ['devices', null], ['requests', true], ['error-rate', true], ['p99', true]]);
    expect(s.rollout).toMatchObject({ wave: 1, phase: 'publish' });
  });

  it('after the last wave: the group document, then (after the settle time) the device documents removed', () => {
    let r = started();
    r.wave = r.waves.length;
    r.phase = 'publish';
    for (const w of r.waves) w.startedAt = T0;
    let s = step(r, observe(T0, r, devices));
    expect(s.rollout.phase).toBe('finalize');
    s = step(s.rollout, observe(T0, r, devices));
    expect(s.actions).toEqual([{ kind: 'group' }]);
    r = s.rollout;
    expect(step(r, observe(T0 + CLEAR_SETTLE_MS - 1, r, devices)).actions).toEqual([]);
    s = step(r, observe(T0 + CLEAR_SETTLE_MS, r, devices));
    expect(s.actions).toEqual([{ kind: 'clear', devices: r.waves.flatMap((w) => w.devices) }]);
    expect(s.rollout).toMatchObject({ status: 'succeeded', phase: 'done' });
  });

  it('a device that rejects the version fails the wave at once, and the wave is put back', () => {
    let r = step(started(), observe(T0, started(), [])).rollout;
    const d = r.waves[0]?.devices[0] as string;
    const rejected = view(3, 1, { models: [...view(3).models, { name: 'mnist', version: 4, state: 'rejected', labels: [], executionProvider: null, sha256: null, progress: 1, error: 'shadow agreement 0.41 < 0.98' }] });
    const s = step(r, observe(T0 + 2000, r, [], [], { [d]: rejected }));
    expect(s.rollout).toMatchObject({ status: 'failed', reason: `wave 1: ${d}: mnist:4 rejected: shadow agreement 0.41 < 0.98` });
    expect(s.actions).toEqual([{ kind: 'devices', devices: [d], models: 'previous' }]);
    expect(s.rollout.waves[0]?.outcome).toBe('rolled_back');
    r = s.rollout;
    // A failed rollout takes no more steps.
    expect(step(r, observe(T0 + 60_000, r, [])).rollout).toBe(r);
  });

  it('a wave that does not apply in time fails with the count; with --on-failure pause it holds instead', () => {
    const r = step(started(), observe(T0, started(), [])).rollout;
    const s = step(r, observe(T0 + 15 * MIN, r, []));
    expect(s.rollout.reason).toBe('wave 1: 0/1 devices applied (need 100%) within 15m');
    const paused = step(started({ onFailure: 'pause' }), observe(T0, started(), [])).rollout;
    const p = step(paused, observe(T0 + 15 * MIN, paused, []));
    expect(p.rollout.status).toBe('paused');
    expect(p.actions).toEqual([]);
  });

  it('pause, resume and abort from the command line; abort --rollback puts back every device given the new version', () => {
    let r = step(started(), observe(T0, started(), [])).rollout;
    r = step({ ...r, requested: 'pause' }, observe(T0 + 1, r, [])).rollout;
    expect(r).toMatchObject({ status: 'paused', requested: null });
    expect(step(r, observe(T0 + 20 * MIN, r, [])).rollout).toBe(r); // paused: no timeout runs
    r = step({ ...r, requested: 'resume' }, observe(T0 + 20 * MIN, r, [])).rollout;
    expect(r).toMatchObject({ status: 'running', phaseSince: T0 + 20 * MIN });
    const s = step({ ...r, requested: 'abort-rollback' }, observe(T0 + 21 * MIN, r, []));
    expect(s.rollout.status).toBe('aborted');
    expect(s.actions).toEqual([{ kind: 'devices', devices: r.waves[0]?.devices, models: 'previous' }]);
  });
});

describe('gates', () => {
  const wave = ['pi-00', 'pi-01', 'pi-02'];
  const control = ['pi-03', 'pi-04', 'pi-05', 'pi-06'];
  function soaked(over: Partial<RolloutSpec> = {}): Rollout {
    const r = started(over);
    r.waves = [{ devices: wave, startedAt: T0, appliedAt: T0 + MIN, gates: [], outcome: 'running' }, { devices: control, startedAt: null, appliedAt: null, gates: [], outcome: 'pending' }];
    r.phase = 'soak';
    r.phaseSince = T0 + MIN;
    return r;
  }
  const end = T0 + 11 * MIN;
  const obs = (r: Rollout, intervals: Interval[]): Observation => ({ ...observe(end, r, wave, intervals), devices: new Map([...wave, ...control].map((d) => [d, wave.includes(d) ? view(4, 1) : view(3)])) });

  it('a 10x slower version fails the p99 gate with the figure', () => {
    const r = soaked();
    const data = wave.flatMap((d) => [...series(d, 3, T0 - 11 * MIN, T0, 2), ...series(d, 4, T0 + MIN, end, 20)]);
    const v = evaluateGates(r, r.waves[0] as Rollout['waves'][number], obs(r, data));
    expect(v.verdict).toBe('fail');
    expect(v.reason).toMatch(/^p99 gate: mnist:4: \+900% \(\+18\.00 ms\), at most \+25% or \+1 ms; p99 x10\.00 on 3 device\(s\)/);
  });

  it('a sub-millisecond p99 that triples passes within the slack, and fails without it', () => {
    const data = wave.flatMap((d) => [...series(d, 3, T0 - 11 * MIN, T0, 0.1), ...series(d, 4, T0 + MIN, end, 0.3)]);
    const slack = soaked();
    expect(evaluateGates(slack, slack.waves[0] as Rollout['waves'][number], obs(slack, data)).verdict).toBe('pass');
    const none = soaked({ p99SlackMs: 0 });
    expect(evaluateGates(none, none.waves[0] as Rollout['waves'][number], obs(none, data)).reason).toMatch(/^p99 gate: mnist:4: \+200(\.0)?% \(\+0\.20 ms\)/);
  });

  it('a load that slows every device alike does not stop the rollout (corrected by the devices still on the old version)', () => {
    const r = soaked();
    const data = [
      ...wave.flatMap((d) => [...series(d, 3, T0 - 11 * MIN, T0, 2), ...series(d, 4, T0 + MIN, end, 6)]),
      ...control.flatMap((d) => [...series(d, 3, T0 - 11 * MIN, T0, 2), ...series(d, 3, T0 + MIN, end, 6)]),
    ];
    const v = evaluateGates(r, r.waves[0] as Rollout['waves'][number], obs(r, data));
    expect(v.verdict).toBe('pass');
    expect(v.gates.find((g) => g.name === 'p99')?.value).toBeCloseTo(0, 5);
  });

  it('errors above the rate fail; too few requests wait, then fail after the apply timeout past the soak', () => {
    const r = soaked();
    const errors = wave.flatMap((d) => [...series(d, 3, T0 - 11 * MIN, T0, 2), ...series(d, 4, T0 + MIN, end, 2, 50, 2)]);
    const v = evaluateGates(r, r.waves[0] as Rollout['waves'][number], obs(r, errors));
    expect(v.reason).toBe('error-rate gate: 360 errors in 9000 requests (4%, at most 1%)');

    const few = wave.flatMap((d) => series(d, 4, T0 + MIN, end, 2, 0));
    expect(evaluateGates(r, r.waves[0] as Rollout['waves'][number], obs(r, few)).verdict).toBe('wait');
    expect(step(r, obs(r, few)).rollout.status).toBe('running');
    const late = { ...obs(r, few), now: T0 + MIN + 10 * MIN + 15 * MIN };
    expect(step(r, late).rollout.reason).toBe('wave 1: not enough requests to judge: 0 < 100 on the new versions');
  });

  it("shadow agreement from the collector's shadow points: the wave's last figures summed against the threshold; a rejection fails it", () => {
    const shadow = { sampleRate: 0.1, minSamples: 200, maxDurationS: 900, compare: 'argmax' as const, atol: 1e-4, rtol: 1e-3, minAgreement: 0.98, onTimeout: 'reject' as const };
    const r = soaked({ shadow });
    const data = wave.flatMap((d) => [...series(d, 3, T0 - 11 * MIN, T0, 2), ...series(d, 4, T0 + MIN, end, 2)]);
    const point = (device: string, ts: number, samples: number, agreed: number, verdict: 'activated' | 'rejected' | null = null) => ({ device, model: 'mnist', version: 4, ts, samples, agreed, verdict });
    const shadows = [point('pi-00', T0 + 1000, 100, 90), point('pi-00', T0 + 2000, 200, 199, 'activated'), point('pi-01', T0 + 2000, 200, 198, 'activated'), point('pi-09', T0 + 2000, 200, 0)];
    const pass = evaluateGates(r, r.waves[0] as Rollout['waves'][number], { ...obs(r, data), shadows });
    expect(pass.gates.find((g) => g.name === 'shadow')).toEqual({
      name: 'shadow', value: 397 / 400, threshold: 0.98, ok: true, detail: 'agreement 0.9925 (397 of 400 samples on 2 device(s)), at least 0.98',
    });
    const fail = evaluateGates(r, r.waves[0] as Rollout['waves'][number], { ...obs(r, data), shadows: [...shadows, point('pi-02', T0 + 3000, 200, 150, 'rejected')] });
    expect(fail.reason).toBe('shadow gate: agreement 0.9117 (547 of 600 samples on 3 device(s)), at least 0.98; rejected on pi-02');
    expect(evaluateGates(r, r.waves[0] as Rollout['waves'][number], obs(r, data)).gates.find((g) => g.name === 'shadow')?.detail).toBe('no shadow comparisons reported: not judged');
  });

  it('one interval 11x slower in a device window does not move its weighted median', () => {
    const xs = series('d', 3, 0, 600_000, (ts) => (ts === 300_000 ? 22 : 2));
    expect(weightedMedianP99(xs)).toBe(2);
  });

  it('false alarms on an unchanged version, with per-interval p99 swinging up to 11x: under 1% of 2,000 simulated waves', () => {
    expect(falseAlarmRate(1_000, 42)).toBeLessThan(0.01);
  });

  it('and on the same noise a version 1.6x slower on a single canary is caught in over 95% of waves', () => {
    expect(falseAlarmRate(500, 43, { slowdown: 1.6 })).toBeGreaterThan(0.95);
  });
});
