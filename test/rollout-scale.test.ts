/**
 * The rollout-scale benchmark's harness (bench/rollout-scale.ts) at 20
 * simulated devices, so the benchmark cannot rot: a real Mosquitto, a real
 * collector and RolloutController, the simulator answering desired
 * documents. The rollout goes through its four waves and every device ends
 * on the group document with the new version, in the simulator and in the
 * collector's store, without a document rejected. The simulated device's
 * rules (bench/sim-desired.ts) are checked on their own first.
 */
import { describe, expect, it } from 'vitest';
import { runRolloutScale } from '../bench/rollout-scale.js';
import { SimDesiredState } from '../bench/sim-desired.js';
import { generateKeyPair } from '../protocol/index.js';
import { buildManifest, past, signDesired, signManifest } from './helpers/fleet.js';
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

describe('a simulated device answering desired documents', () => {
  const key = generateKeyPair();
  const manifest = signManifest(buildManifest('scale', 1, new Uint8Array(16)), [key]);
  const doc = (target: { device: string } | { group: string }, serial: number, version: number, expired = false): Buffer =>
    Buffer.from(JSON.stringify(signDesired({ target, serial, models: [{ name: 'scale', version, labels: ['stable'], manifest }], ...(expired ? { issuedAt: past(2), expiresAt: past(1) } : {}) }, [key])));
  const served = (s: SimDesiredState): string => s.served.map((m) => `${m.name}:${m.version}`).join(' ');

  it('own document over the group, back to the group when it is removed, replays and other targets rejected', () => {
    const s = new SimDesiredState('d-1', 'lab');
    expect(s.offer({ group: 'lab' }, doc({ group: 'lab' }, 1, 1))).toBe('applied');
    expect([s.desired, served(s)]).toEqual([{ source: 'group', group: 'lab', serial: 1, status: 'applied', error: null }, 'scale:1']);
    // The same retained document again (a resubscribe) changes nothing.
    expect(s.offer({ group: 'lab' }, doc({ group: 'lab' }, 1, 1))).toBe('none');
    expect(s.offer({ device: 'd-1' }, doc({ device: 'd-1' }, 1, 2))).toBe('applied');
    expect([s.desired?.source, served(s)]).toEqual(['device', 'scale:2']);
    // A newer group document waits behind the device's own, and counts once that is removed.
    expect(s.offer({ group: 'lab' }, doc({ group: 'lab' }, 2, 2))).toBe('none');
    expect(s.offer({ device: 'd-1' }, Buffer.alloc(0))).toBe('applied');
    expect([s.desired, served(s)]).toEqual([{ source: 'group', group: 'lab', serial: 2, status: 'applied', error: null }, 'scale:2']);
    // The device's serial is remembered after removal: an older one is a replay.
    expect(s.offer({ device: 'd-1' }, doc({ device: 'd-1' }, 0, 1))).toBe('rejected');
    expect(s.desired).toMatchObject({ source: 'device', serial: 0, status: 'rejected' });
    expect(served(s)).toBe('scale:2');
    expect(s.offer({ device: 'd-1' }, doc({ device: 'd-2' }, 5, 1))).toBe('rejected');
    expect(s.desired?.error).toBe('the document is for another target');
    expect(new SimDesiredState('d-1', 'lab').offer({ group: 'lab' }, doc({ group: 'lab' }, 3, 1, true))).toBe('rejected');
    expect(new SimDesiredState('d-1', 'lab').offer({ group: 'lab' }, Buffer.from('{"payloadType":"x"}'))).toBe('rejected');
  });
});
