import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fragileScaleModel, scaleModel } from '../models/onnx/zoo.js';
import { parseEvent, parseReportedState, type DeviceEvent, type ReportedState } from '../protocol/reported.js';
import { spawnAgent } from './helpers/child.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { buildManifest, connectFleet, makeFleetKeys, publishBlocks, publishDesired, signDesired, signManifest, writeTrust, type FleetKeys } from './helpers/fleet.js';
import { startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const ROOT = 'edgefleet';
let broker: Mosquitto;
let fleet: MqttClient;
let keys: FleetKeys;
let trustFile: string;
const states = new Map<string, ReportedState>();
const events: (DeviceEvent & { device: string })[] = [];

const selfTest = (v: number) => ({ inputs: [{ name: 'x', datatype: 'FP32' as const, shape: [1, 2], data: [1, 2] }], outputs: [{ name: 'y', datatype: 'FP32' as const, shape: [1, 2], data: [v, 2 * v] }], atol: 1e-4, rtol: 1e-3 });

async function release(name: string, v: number, bytes: Uint8Array): Promise<ReturnType<typeof signManifest>> {
  const manifest = buildManifest(name, v, bytes, { selfTest: selfTest(v) });
  await publishBlocks(fleet, ROOT, manifest, bytes);
  return signManifest(manifest, [keys.models]);
}

async function deploy(device: string, serial: number, name: string, version: number, manifest: ReturnType<typeof signManifest>): Promise<void> {
  await publishDesired(fleet, ROOT, { device }, signDesired({ target: { device }, serial, models: [{ name, version, manifest }] }, [keys.rollout]));
}

async function predict(url: string, n: number, value = 1): Promise<{ status: number; version: string }> {
  const res = await fetch(`${url}/v2/models/scale/infer`, { method: 'POST', body: JSON.stringify({ inputs: [{ name: 'x', shape: [1, n], datatype: 'FP32', data: new Array(n).fill(value) }] }) });
  const body = (await res.json()) as { model_version?: string };
  return { status: res.status, version: body.model_version ?? '' };
}

beforeAll(async () => {
  broker = await startMosquitto();
  fleet = await connectFleet(broker.url);
  keys = makeFleetKeys();
  trustFile = join(await mkdtemp(join(tmpdir(), 'edgefleet-trust-')), 'trust.json');
  await writeTrust(trustFile, keys);
  await fleet.subscribeAsync(`${ROOT}/devices/+/state`, { qos: 1 });
  await fleet.subscribeAsync(`${ROOT}/devices/+/events`, { qos: 1 });
  fleet.on('message', (topic, payload) => {
    const device = topic.split('/')[2] ?? '';
    if (topic.endsWith('/state') && payload.length > 0) states.set(device, parseReportedState(payload));
    if (topic.endsWith('/events')) events.push({ ...parseEvent(payload), device });
  });
}, 60_000);

afterAll(async () => {
  await fleet?.endAsync();
  await broker?.stop();
});

describe('health window', () => {
  let t: TestAgent;
  afterAll(async () => t?.close());

  it('rolls back automatically when the new version fails in the field, keeping the old one serving', async () => {
    t = await startTestAgent({ deviceId: 'pi-health', trust: trustFile, mqtt: { url: broker.url }, rollout: { healthWindowS: 3, healthMinFailures: 3, retryBaseMs: 50 } });
    await deploy('pi-health', 1, 'scale', 1, await release('scale', 1, scaleModel(1)));
    await waitFor(() => states.get('pi-health')?.desired?.status === 'applied', 20_000, 'v1 applied');

    await deploy('pi-health', 2, 'scale', 2, await release('scale', 2, fragileScaleModel(2)));
    await waitFor(async () => (await predict(t.url, 2)).version === '2', 20_000, 'v2 switched in');
    // Field traffic the self-test did not cover breaks version 2.
    const answers = await Promise.all(Array.from({ length: 6 }, () => predict(t.url, 3, 9)));
    expect(answers.some((a) => a.status === 400 && a.version === '')).toBe(true);

    const s = await waitFor(() => states.get('pi-health')?.desired?.serial === 2 && states.get('pi-health')?.desired?.status === 'failed' && states.get('pi-health'), 20_000, 'rollback reported');
    expect(s.desired?.error).toMatch(/rolled back: \d+ of \d+ runs failed in its health window/);
    expect(s.models.find((m) => m.version === 2)).toMatchObject({ state: 'rolled_back' });
    expect(events.some((e) => e.device === 'pi-health' && e.type === 'rolled_back' && e.version === 2)).toBe(true);
    expect(await predict(t.url, 3)).toEqual({ status: 200, version: '1' });
    expect(t.agent.registry.servables().map((x) => x.version)).toEqual([1]);
  });
});

describe('a crash during the health window', () => {
  it('rolls back to the previous version when the agent restarts', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-crash-'));
    const config = { deviceId: 'pi-crash', trust: trustFile, mqtt: { url: broker.url }, rollout: { healthWindowS: 60 } };
    let agent = await spawnAgent(dir, config);
    await deploy('pi-crash', 1, 'scale', 1, await release('scale', 1, scaleModel(1)));
    await waitFor(() => states.get('pi-crash')?.desired?.status === 'applied', 20_000, 'v1 applied').catch((err: unknown) => {
      throw new Error(`${String(err)}\n${agent.output()}`);
    });
    await deploy('pi-crash', 2, 'scale', 2, await release('scale', 2, scaleModel(2)));
    await waitFor(async () => (await predict(agent.url, 2)).version === '2', 20_000, 'v2 switched in');

    agent.proc.kill('SIGKILL');
    await agent.exited;
    agent = await spawnAgent(dir, config);
    try {
      // Serving resumes on version 1 before (and without) any network.
      expect(await predict(agent.url, 2)).toEqual({ status: 200, version: '1' });
      const s = await waitFor(() => states.get('pi-crash')?.desired?.status === 'failed' && states.get('pi-crash'), 20_000, 'crash rollback reported');
      expect(s.desired?.error).toMatch(/agent stopped during its health window/);
      expect(s.models.find((m) => m.version === 2)?.state).toBe('rolled_back');
    } finally {
      agent.proc.kill('SIGTERM');
      await agent.exited;
    }
  });
});
