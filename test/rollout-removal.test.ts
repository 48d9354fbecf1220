/**
 * Removing a desired document (docs/protocol.md section 10), end to end against
 * a real Mosquitto: a zero-length retained message on a device's desired topic
 * makes its group's document count, under the group's own serial rule; the
 * removed target's serial is still remembered.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { topics } from '../protocol/names.js';
import { scaleModel } from '../models/onnx/zoo.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { buildManifest, publishBlocks, publishDesired, signDesired, signManifest, type DesiredEntry } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';

const ROOT = 'edgefleet';
let h: FleetHarness;
const entries = new Map<number, DesiredEntry>();

beforeAll(async () => {
  h = await startFleetHarness({ root: ROOT });
  for (const v of [1, 2]) {
    const bytes = scaleModel(v);
    const manifest = buildManifest('scale', v, bytes);
    await publishBlocks(h.fleet, ROOT, manifest, bytes);
    entries.set(v, { name: 'scale', version: v, manifest: signManifest(manifest, [h.keys.models]) });
  }
}, 60_000);

afterAll(async () => {
  await h?.stop();
});

let t: TestAgent | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

const entry = (v: number, labels: string[] = []): DesiredEntry => ({ ...(entries.get(v) as DesiredEntry), labels });

async function deployDevice(device: string, serial: number, models: DesiredEntry[]): Promise<string> {
  const envelope = JSON.stringify(signDesired({ target: { device }, serial, models }, [h.keys.rollout]));
  await publishDesired(h.fleet, ROOT, { device }, envelope);
  return envelope;
}

async function deployGroup(group: string, serial: number, models: DesiredEntry[]): Promise<void> {
  await publishDesired(h.fleet, ROOT, { group }, signDesired({ target: { group }, serial, models }, [h.keys.rollout]));
}

async function removeDevice(device: string): Promise<void> {
  await h.fleet.publishAsync(topics.device(ROOT, device, 'desired'), '', { qos: 1, retain: true });
}

async function start(device: string, group: string, stateDir?: string): Promise<TestAgent> {
  return startTestAgent({ deviceId: device, groups: [group], trust: h.trustFile, mqtt: { url: h.broker.url }, rollout: { healthWindowS: 0, retryBaseMs: 50 }, ...(stateDir !== undefined && { stateDir }) });
}

describe('removing a device document', () => {
  it('falls back to the group document applied before it and serves what that lists', async () => {
    t = await start('rm-back', 'rm-back-lab');
    await deployGroup('rm-back-lab', 5, [entry(1)]);
    await waitFor(h.desired('rm-back', 5, 'applied'), 20_000, 'group serial 5 applied');
    expect(h.states.get('rm-back')?.desired).toMatchObject({ source: 'group', group: 'rm-back-lab' });
    const device3 = await deployDevice('rm-back', 3, [entry(1), entry(2)]);
    await waitFor(() => h.desired('rm-back', 3, 'applied')() && t?.agent.registry.defaultOf('scale') === 2, 20_000, 'device serial 3 applied');
    expect(h.states.get('rm-back')?.desired?.source).toBe('device');

    await removeDevice('rm-back');
    const s = await waitFor(() => h.desired('rm-back', 5, 'applied')() && t?.agent.registry.servables().length === 1 && h.states.get('rm-back'), 20_000, 'fell back to the group document');
    expect(s.desired).toEqual({ source: 'group', group: 'rm-back-lab', serial: 5, status: 'applied', error: null });
    expect(t.agent.registry.defaultOf('scale')).toBe(1);
    expect(s.models.map((m) => [m.version, m.state])).toEqual([[1, 'serving']]);

    // The device target's serial is remembered: an older document from it is a replay, and so is the removed one itself.
    await deployDevice('rm-back', 2, [entry(2)]);
    const replay = await waitFor(h.desired('rm-back', 2, 'rejected'), 10_000, 'older device document rejected');
    expect(replay.desired?.error).toMatch(/serial 2 from device "rm-back" is not above 3, the last one applied/);
    await publishDesired(h.fleet, ROOT, { device: 'rm-back' }, device3);
    const again = await waitFor(h.desired('rm-back', 3, 'rejected'), 10_000, 'removed device document rejected when published again');
    expect(again.desired?.error).toMatch(/serial 3 from device "rm-back" is not above 3/);
    expect(t.agent.registry.defaultOf('scale')).toBe(1);
    expect(t.agent.registry.servables().map((x) => x.version)).toEqual([1]);
  });

  it('applies a group document published while the device document counted, and changes nothing served when it lists the same versions', async () => {
    t = await start('rm-wave', 'rm-wave-lab');
    await deployDevice('rm-wave', 1, [entry(1, ['stable'])]);
    await waitFor(h.desired('rm-wave', 1, 'applied'), 20_000, 'device serial 1 applied');
    // The wave's group document: the device document still counts, so nothing happens yet.
    await deployGroup('rm-wave-lab', 7, [entry(1, ['stable'])]);
    await new Promise((r) => setTimeout(r, 300));
    expect(h.states.get('rm-wave')?.desired).toMatchObject({ source: 'device', serial: 1, status: 'applied' });
    const servable = t.agent.registry.servableOf('scale', 1);
    expect(servable).toBeDefined();
    const eventsBefore = h.events.length;
    const reportsBefore = h.reports('rm-wave').length;

    await removeDevice('rm-wave');
    const s = await waitFor(h.desired('rm-wave', 7, 'applied'), 20_000, 'group serial 7 applied');
    expect(s.desired).toEqual({ source: 'group', group: 'rm-wave-lab', serial: 7, status: 'applied', error: null });
    await new Promise((r) => setTimeout(r, 300));
    // No reload, no model events: the same session serves, under the same label.
    expect(t.agent.registry.servableOf('scale', 1)).toBe(servable);
    expect(t.agent.registry.servables()).toEqual([servable]);
    expect(t.agent.registry.labelsOf('scale')).toEqual({ stable: 1 });
    const events = h.events.slice(eventsBefore).filter((e) => e.device === 'rm-wave');
    expect(events.map((e) => e.type)).toEqual(['desired.received']);
    const states = h.reports('rm-wave').slice(reportsBefore).flatMap((r) => r.models.map((m) => m.state));
    expect(new Set(states)).toEqual(new Set(['serving']));
  });

  it('removed while the agent was away: after a restart it falls back once the document in force has not come for the grace', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'edgefleet-removal-'));
    try {
      t = await start('rm-away', 'rm-away-lab', stateDir);
      await deployGroup('rm-away-lab', 2, [entry(1)]);
      await waitFor(h.desired('rm-away', 2, 'applied'), 20_000, 'group serial 2 applied');
      await deployDevice('rm-away', 1, [entry(2)]);
      await waitFor(() => h.desired('rm-away', 1, 'applied')() && t?.agent.registry.servables().length === 1, 20_000, 'device serial 1 applied');
      await t.agent.stop();
      await rm(t.dir, { recursive: true, force: true });
      await removeDevice('rm-away');
      const started = Date.now();
      t = await start('rm-away', 'rm-away-lab', stateDir);
      // Serves what served before the restart, then falls back to the group's set.
      expect(t.agent.registry.defaultOf('scale')).toBe(2);
      await waitFor(() => h.desired('rm-away', 2, 'applied')() && t?.agent.registry.defaultOf('scale') === 1, 20_000, 'fell back to the group document');
      expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
      expect(h.states.get('rm-away')?.desired).toMatchObject({ source: 'group', group: 'rm-away-lab' });
    } finally {
      await rm(stateDir, { recursive: true, force: true });
    }
  });

  it('with no other document, changes nothing: what serves keeps serving', async () => {
    t = await start('rm-alone', 'rm-alone-lab');
    await deployDevice('rm-alone', 4, [entry(2)]);
    await waitFor(h.desired('rm-alone', 4, 'applied'), 20_000, 'device serial 4 applied');
    const eventsBefore = h.events.length;
    await removeDevice('rm-alone');
    await new Promise((r) => setTimeout(r, 500));
    expect(t.agent.registry.servables().map((x) => x.version)).toEqual([2]);
    expect(h.states.get('rm-alone')?.desired).toMatchObject({ source: 'device', serial: 4, status: 'applied' });
    expect(h.events.slice(eventsBefore).filter((e) => e.device === 'rm-alone')).toEqual([]);
  });
});
