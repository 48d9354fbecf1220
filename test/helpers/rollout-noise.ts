/**
 * The p99 gate on an unchanged version under the noise a loaded board shows
 * (per-interval p99 of an unchanged model was seen to swing up to 11x), for
 * the planner's tests and `npm run bench`: how often a wave of a version
 * that changed nothing would be stopped.
 */
import { mulberry32 } from '../../models/onnx/zoo.js';
import type { Interval, Rollout } from '../../fleet/rollout/planner.js';
import { evaluateGates, newRollout, parseWaves } from '../../fleet/rollout/planner.js';

const MIN = 60_000;
const envelope = { payloadType: 't', payload: '', signatures: [] };

export interface NoiseOptions {
  /** Devices in the wave judged (a canary wave is 1). */
  waveSize?: number;
  /** Devices still on the old version. */
  controlSize?: number;
  /** Share of intervals that spike, and the largest spike. */
  spikeShare?: number;
  maxSpike?: number;
  soakMs?: number;
  maxP99Increase?: number;
  /** The new version's latency against the old one (1: unchanged). */
  slowdown?: number;
}

/**
 * Share of `trials` waves the gates fail: with `slowdown` 1 (the version
 * changed nothing) the false-alarm rate, above 1 the rate a slower version is caught.
 */
export function falseAlarmRate(trials: number, seed: number, options: NoiseOptions = {}): number {
  const { waveSize = 1, controlSize = 20, spikeShare = 0.08, maxSpike = 11, soakMs = 10 * MIN, maxP99Increase = 0.25, slowdown = 1 } = options;
  const rand = mulberry32(seed);
  const normal = (): number => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  let alarms = 0;
  for (let t = 0; t < trials; t++) {
    const wave = Array.from({ length: waveSize }, (_, i) => `w${i}`);
    const control = Array.from({ length: controlSize }, (_, i) => `c${i}`);
    const r: Rollout = newRollout(`noise-${t}`, {
      group: 'g', models: [{ name: 'm', version: 2, labels: [], manifest: envelope }], waves: parseWaves('100%'), canary: [],
      minApplied: 1, applyTimeoutMs: 15 * MIN, soakMs, maxErrorRate: 0.01, maxP99Increase, p99SlackMs: 1, minRequests: 100, shadow: null,
      onFailure: 'rollback', documentTtlMs: 86_400_000,
    }, wave, 0);
    r.previous = [{ name: 'm', version: 1, labels: [], manifest: envelope }];
    const start = 20 * MIN;
    const applied = start + MIN;
    const end = applied + soakMs;
    const waveRecord = { devices: wave, startedAt: start, appliedAt: applied, gates: [], outcome: 'running' as const };
    r.waves = [waveRecord];
    // The whole machine's load drifts between the windows, alike for every device.
    const drift = Math.exp(normal() * 0.3);
    const intervals: Interval[] = [];
    for (const device of [...wave, ...control]) {
      const base = 2 + rand() * 8;
      const onWave = wave.includes(device);
      for (let ts = 10_000; ts <= end; ts += 10_000) {
        if (ts > start && ts <= applied) continue;
        const after = ts > applied;
        const spike = rand() < spikeShare ? 1 + rand() * (maxSpike - 1) : 1;
        const p99 = base * (after ? drift : 1) * (onWave && after ? slowdown : 1) * Math.exp(normal() * 0.25) * spike;
        intervals.push({ device, model: 'm', version: onWave && after ? 2 : 1, ts, count: 20 + Math.floor(rand() * 200), errors: 0, p99 });
      }
    }
    const devices = new Map([...wave, ...control].map((d) => [d, { online: true, desired: null, models: [] }]));
    const v = evaluateGates(r, waveRecord, { now: end, devices, published: new Map(), intervals });
    if (v.verdict === 'fail') alarms++;
  }
  return alarms / trials;
}
