import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEvent, parseReportedState, type DeviceEvent, type ReportedState } from '../protocol/reported.js';
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
const events: DeviceEvent[] = [];
/** Serials go up across the file whichever tests run: each test deploys with the next one. */
let serial = 0;

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

/** Publishes a desired document for this device with the next serial, and returns that serial. */
async function deploy(models: { name: string; version: number; labels?: string[]; manifest: ReturnType<typeof signManifest> }[]): Promise<number> {
  serial += 1;
  await publishDesired(fleet, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial, models }, [keys.rollout]));
  return serial;
}

const onDisk = async (): Promise<string[]> => (await readdir(join(t.dir, 'state', 'models', 'scale')).catch(() => [])).sort();

/**
 * A test's starting point, so it passes alone as after the ones before it:
 * `versions` were deployed in this order, the last serves and the one before
 * it is on disk. Deploys them only when the device is not there already.
 */
async function given(versions: number[]): Promise<void> {
  const last = versions.at(-1);
  const before = versions.at(-2);
  const serving = state?.models.map((m) => `${m.name}@${m.version}:${m.state}`).join();
  if (state?.desired?.status === 'applied' && serving === `scale@${last}:serving` && (before === undefined || (await onDisk()).includes(String(before)))) return;
  for (const v of versions) {
    const s = await deploy([{ name: 'scale', version: v, labels: ['stable'], manifest: await publish(v) }]);
    await waitFor(desiredIs(s, 'applied'), 20_000, `given: version ${v} applied`);
  }
}

beforeAll(async () => {
  broker = await startMosquitto();
  fleet = await connectFleet(broker.url);
  keys = makeFleetKeys();
  await fleet.subscribeAsync([`${ROOT}/devices/${DEVICE}/state`, `${ROOT}/devices/${DEVICE}/events`], { qos: 1 });
  fleet.on('message', (topic, payload) => {
    if (topic.endsWith('/state') && payload.length > 0) state = parseReportedState(payload);
    if (topic.endsWith('/events')) events.push(parseEvent(payload));
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
    const n = await deploy([{ name: 'scale', version: 1, labels: ['stable'], manifest: m1 }]);
    const s = await waitFor(desiredIs(n, 'applied'), 20_000, `serial ${n} applied`);
    expect(s.models).toMatchObject([{ name: 'scale', version: 1, state: 'serving', labels: ['stable'], executionProvider: 'cpu', progress: 1, error: null }]);
    expect(await infer(3)).toEqual({ status: 200, factor: 1, version: '1' });
    const label = await fetch(`${t.url}/v1/models/scale/labels/stable`);
    expect(label.status).toBe(200);
  });

  it('upgrades under concurrent predict load with zero failed requests', async () => {
    await given([1]);
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
    const n = await deploy([{ name: 'scale', version: 2, labels: ['stable'], manifest: m2 }]);
    const s = await waitFor(desiredIs(n, 'applied'), 20_000, `serial ${n} applied`);
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
    await given([1, 2]);
    const m1 = signManifest(buildManifest('scale', 1, scaleModel(1)), [keys.models]);
    const seen = events.length;
    const n = await deploy([{ name: 'scale', version: 1, manifest: m1 }]);
    await waitFor(desiredIs(n, 'applied'), 20_000, `serial ${n} applied`);
    expect(events.slice(seen).filter((e) => e.type.startsWith('download.'))).toEqual([]);
    expect(await infer(4)).toEqual({ status: 200, factor: 1, version: '1' });
    expect(t.agent.registry.servables().map((s) => s.version)).toEqual([1]);
  });

  it('keeps only the listed version and the one served before on disk', async () => {
    await given([2, 1]);
    const m3 = await publish(3);
    const n = await deploy([{ name: 'scale', version: 3, manifest: m3 }]);
    await waitFor(desiredIs(n, 'applied'), 20_000, `serial ${n} applied`);
    await waitFor(async () => (await onDisk()).join() === '1,3', 10_000, 'version 2 pruned');
    expect(await infer(2)).toEqual({ status: 200, factor: 3, version: '3' });
  });
});
