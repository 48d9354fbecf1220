/**
 * A device away while a rollout passes over it (issue 14): its own document
 * published, the group's replaced, its own removed, all while it is offline.
 * Back, with its broker session kept, it must end on the group's new document.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scaleModel } from '../models/onnx/zoo.js';
import { waitFor } from './helpers/agent.js';
import { spawnAgent } from './helpers/child.js';
import { buildManifest, publishBlocks, publishDesired, signDesired, signManifest } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';
import { mosquittoSkipReason } from './helpers/mosquitto.js';

const ROOT = 'edgefleet';
const skip = mosquittoSkipReason();
let h: FleetHarness;
let dir: string;

beforeAll(async () => {
  if (skip) return;
  h = await startFleetHarness({ root: ROOT });
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-away-'));
}, 60_000);
afterAll(async () => {
  await h?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function release(version: number) {
  const bytes = scaleModel(version);
  const manifest = buildManifest('scale', version, bytes);
  await publishBlocks(h.fleet, ROOT, manifest, bytes);
  return signManifest(manifest, [h.keys.models]);
}
const serving = (device: string): string =>
  (h.states.get(device)?.models ?? []).filter((m) => m.state === 'serving').map((m) => `${m.name}:${m.version}`).join(' ');

describe.skipIf(skip)('a device away during a rollout', () => {
  it('device document published and removed, group document replaced while it was offline: back, it serves the group document', async () => {
    const home = join(dir, 'pi-away');
    await mkdir(home);
    const config = { deviceId: 'pi-away', groups: ['lab'], trust: h.trustFile, mqtt: { url: h.broker.url }, rollout: { healthWindowS: 1, retryBaseMs: 50 } };
    const v1 = await release(1);
    await publishDesired(h.fleet, ROOT, { group: 'lab' }, signDesired({ target: { group: 'lab' }, serial: 1, models: [{ name: 'scale', version: 1, labels: ['stable'], manifest: v1 }] }, [h.keys.rollout]));
    let agent = await spawnAgent(home, config);
    await waitFor(() => serving('pi-away') === 'scale:1' && h.states.get('pi-away')?.desired?.status === 'applied', 30_000, 'scale:1 applied');
    agent.proc.kill('SIGTERM');
    await agent.exited;

    const v2 = await release(2);
    const models = [{ name: 'scale', version: 2, labels: ['stable'], manifest: v2 }];
    await publishDesired(h.fleet, ROOT, { device: 'pi-away' }, signDesired({ target: { device: 'pi-away' }, serial: 1, models }, [h.keys.rollout]));
    await publishDesired(h.fleet, ROOT, { group: 'lab' }, signDesired({ target: { group: 'lab' }, serial: 2, models }, [h.keys.rollout]));
    await h.fleet.publishAsync(`${ROOT}/devices/pi-away/desired`, '', { qos: 1, retain: true });

    agent = await spawnAgent(home, config);
    try {
      await waitFor(() => serving('pi-away') === 'scale:2' && h.states.get('pi-away')?.desired?.source === 'group' && h.states.get('pi-away')?.desired?.serial === 2 && h.states.get('pi-away')?.desired?.status === 'applied', 30_000, 'scale:2 from the group').catch((err: Error) => {
        throw new Error(`${err.message}: ${JSON.stringify(h.states.get('pi-away'))}\n${agent.output().slice(-4000)}`);
      });
      // Nothing of the version before is left serving, and no document was refused on the way.
      expect(serving('pi-away')).toBe('scale:2');
      expect(h.events.filter((e) => e.device === 'pi-away' && e.type === 'desired.rejected')).toEqual([]);
    } finally {
      agent.proc.kill('SIGTERM');
      await agent.exited;
    }
  }, 120_000);
});
