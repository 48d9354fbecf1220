/**
 * The rollout-scale benchmark's harness (bench/rollout-scale.ts) at 20
 * simulated devices, so the benchmark cannot rot: a real Mosquitto, a real
 * collector and RolloutController, the simulator answering desired
 * documents. The rollout goes through its four waves and every device ends
 * on the group document with the new version, in the simulator and in the
 * collector's store, without a document rejected.
 */
import { describe, expect, it } from 'vitest';
import { runRolloutScale } from '../bench/rollout-scale.js';
import { mosquittoSkipReason } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
const DEVICES = 20;

describe.skipIf(skip !== false)('rollout at scale, small', () => {
  it('20 simulated devices: four waves pass and every device ends on the group document with version 2', async () => {
    const res = await runRolloutScale({ devices: DEVICES, connections: 3, intervalMs: 500, tickMs: 250, timeoutMs: 40_000 });
    const r = res.rollout;
    expect(r.status, r.reason ?? '').toBe('succeeded');
    expect(r.waves.map((w) => w.devices.length)).toEqual([1, 1, 8, 10]);
    expect(r.waves.map((w) => w.outcome)).toEqual(['passed', 'passed', 'passed', 'passed']);
    for (const w of r.waves) expect(w.gates.map((g) => [g.name, g.ok])).toEqual([['applied', true], ['devices', null], ['requests', true], ['error-rate', true], ['p99', true]]);
    expect(r.previous?.map((m) => `${m.name}:${m.version}`)).toEqual(['scale:1']);
    // One device document per device, the group document, one removal per device.
    expect(res.published).toBe(2 * DEVICES + 1);
    expect(res.onGroupDocument).toBe(DEVICES);
    expect(res.storedOnGroupDocument).toBe(DEVICES);
    expect(res.rejected).toBe(0);
    expect(res.waves.every((w) => w.toAppliedMs !== null && w.toPassedMs !== null)).toBe(true);
    expect(res.ticks.length).toBeGreaterThan(4);
    expect(res.ticks.reduce((n, t) => n + t.documents, 0)).toBe(res.published);
  }, 60_000);
});
