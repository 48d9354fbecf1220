import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseReportedState, type ReportedState } from '../protocol/reported.js';
import { scaleModel } from '../models/onnx/zoo.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { buildManifest, connectFleet, makeFleetKeys, publishBlocks, publishDesired, signDesired, signManifest, writeTrust, type FleetKeys } from './helpers/fleet.js';
import { startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const ROOT = 'edgefleet';
const DEVICE = 'pi-e2e';
let broker: Mosquitto;
let fleet: MqttClient;
let keys: FleetKeys;
let t: TestAgent;
let state: ReportedState | undefined;

/** Publishes version `v` of the "scale" model (y = v·x) with a self-test, and returns its manifest envelope. */
async function publish(v: number): Promise<ReturnType<typeof signManifest>> {
  const bytes = scaleModel(v);
  const manifest = buildManifest('scale', v, bytes, {
    selfTest: { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2], data: [1, 2] }], outputs: [{ name: 'y', datatype: 'FP32', shape: [1, 2], data: [v, 2 * v] }], atol: 1e-4, rtol: 1e-3 },
  });
  await publishBlocks(fleet, ROOT, manifest, bytes);
  return signManifest(manifest, [keys.models]);
}

async function infer(x: number, version?: number): Promise<{ status: number; factor: number; version: string }> {
  const path = version === undefined ? '/v2/models/scale/infer' : `/v2/models/scale/versions/${version}/infer`;
  const res = await fetch(`${t.url}${path}`, { method: 'POST', body: JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1], datatype: 'FP32', data: [x] }] }) });
  const body = (await res.json()) as { model_version?: string; outputs?: { data: number[] }[] };
  return { status: res.status, factor: (body.outputs?.[0]?.data[0] ?? NaN) / x, version: body.model_version ?? '' };
}

const desiredIs = (serial: number, status: string) => () => state?.desired?.serial === serial && state.desired.status === status && state;

beforeAll(async () => {
  broker = await startMosquitto();
  fleet = await connectFleet(broker.url);
  keys = makeFleetKeys();
  await fleet.subscribeAsync(`${ROOT}/devices/${DEVICE}/state`, { qos: 1 });
  fleet.on('message', (topic, payload) => {
    if (topic.endsWith('/state') && payload.length > 0) state = parseReportedState(payload);
  });
  const trustFile = join(await mkdtemp(join(tmpdir(), 'edgefleet-trust-')), 'trust.json');
  await writeTrust(trustFile, keys);
  t = await startTestAgent({ deviceId: DEVICE, trust: trustFile, mqtt: { url: broker.url, topicRoot: ROOT }, rollout: { healthWindowS: 1, retryBaseMs: 50, blockTimeoutMs: 500 } });
}, 60_000);

afterAll(async () => {
  await t?.close();
  await fleet?.endAsync();
  await broker?.stop();
});

describe('signed rollout over MQTT', () => {
  it('publishes, deploys, and the agent pulls, verifies and serves the model', async () => {
    const m1 = await publish(1);
    await publishDesired(fleet, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial: 1, models: [{ name: 'scale', version: 1, labels: ['stable'], manifest: m1 }] }, [keys.rollout]));
    const s = await waitFor(desiredIs(1, 'applied'), 20_000, 'serial 1 applied');
    expect(s.models).toMatchObject([{ name: 'scale', version: 1, state: 'serving', labels: ['stable'], executionProvider: 'cpu', progress: 1, error: null }]);
    expect(await infer(3)).toEqual({ status: 200, factor: 1, version: '1' });
    const label = await fetch(`${t.url}/v1/models/scale/labels/stable`);
    expect(label.status).toBe(200);
  });

  it('upgrades under concurrent predict load with zero failed requests', async () => {
    const m2 = await publish(2);
    let running = true;
    const failures: string[] = [];
    const factors = new Set<number>();
    const clients = Array.from({ length: 6 }, async () => {
      while (running) {
        const r = await infer(5).catch((e: unknown) => ({ status: 0, factor: NaN, version: String(e) }));
        if (r.status !== 200) failures.push(`${r.status} ${r.version}`);
        else factors.add(r.factor);
      }
    });
    await publishDesired(fleet, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial: 2, models: [{ name: 'scale', version: 2, labels: ['stable'], manifest: m2 }] }, [keys.rollout]));
    const s = await waitFor(desiredIs(2, 'applied'), 20_000, 'serial 2 applied');
    await new Promise((r) => setTimeout(r, 200));
    running = false;
    await Promise.all(clients);
    expect(failures).toEqual([]);
    expect([...factors].sort()).toEqual([1, 2]);
    expect(s.models.map((m) => `${m.name}@${m.version}:${m.state}`)).toEqual(['scale@2:serving']);
    expect((await infer(1)).version).toBe('2');
    // The version served before stays on disk for a rollback.
    expect((await readdir(join(t.dir, 'state', 'models', 'scale'))).sort()).toEqual(['1', '2']);
  });

  it('rolls back through a signed desired document, without downloading again', async () => {
    const m1 = signManifest(buildManifest('scale', 1, scaleModel(1)), [keys.models]);
    await publishDesired(fleet, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial: 3, models: [{ name: 'scale', version: 1, manifest: m1 }] }, [keys.rollout]));
    await waitFor(desiredIs(3, 'applied'), 20_000, 'serial 3 applied');
    expect(await infer(4)).toEqual({ status: 200, factor: 1, version: '1' });
    expect(t.agent.registry.servables().map((s) => s.version)).toEqual([1]);
  });

  it('keeps only the listed version and the one served before on disk', async () => {
    const m3 = await publish(3);
    await publishDesired(fleet, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial: 4, models: [{ name: 'scale', version: 3, manifest: m3 }] }, [keys.rollout]));
    await waitFor(desiredIs(4, 'applied'), 20_000, 'serial 4 applied');
    await waitFor(async () => (await readdir(join(t.dir, 'state', 'models', 'scale'))).sort().join() === '1,3', 10_000, 'version 2 pruned');
    expect(await infer(2)).toEqual({ status: 200, factor: 3, version: '3' });
  });
});
