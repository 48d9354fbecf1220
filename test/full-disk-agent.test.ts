import { readdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import type { Manifest } from '../protocol/manifest.js';
import { parseReportedState, type ReportedState } from '../protocol/reported.js';
import { waitFor } from './helpers/agent.js';
import { spawnAgent, type ChildAgent } from './helpers/child.js';
import { buildManifest, connectFleet, makeFleetKeys, publishBlocks, publishDesired, signDesired, signManifest, writeTrust, type FleetKeys } from './helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { startCountingRelay, type CountingRelay } from './helpers/relay.js';
import { mountTmpfs, type Tmpfs } from './helpers/tmpfs.js';

/**
 * "A full disk never stops serving" (issue 12): the real agent binary, its
 * state directory on a 48 MiB tmpfs this test mounts, a real Mosquitto and
 * signed rollouts. The test fills the filesystem during a pull, during an
 * activation's health window, while telemetry buffers with the broker away,
 * and before restarting the agent. Throughout, the model keeps answering
 * 200; each rollout that cannot write is reported `failed` with a message
 * naming the filesystem and the bytes; once there is room it completes; the
 * agent restarts on a full disk and serves; and every telemetry point it
 * stored reaches the collector (seqs without a gap), the ones it had to
 * refuse counted in a "dropped" point.
 */

const ROOT = 'edgefleet';
const DEVICE = 'disk';
const MODEL = 'net';
const TMPFS_BYTES = 48 * 1024 * 1024;
/** Broker → agent, so the 6.5 MB pull takes a few seconds and can be caught part way. */
const LINK_BYTES_PER_S = 2 * 1024 * 1024;

const brokerSkip = mosquittoSkipReason();
const mounted = brokerSkip ? { skip: brokerSkip } : await mountTmpfs(TMPFS_BYTES);
const skip = 'skip' in mounted ? mounted.skip : false;
if (skip) console.warn(`full-disk agent test skipped: ${skip}`);

interface Version {
  bytes: Uint8Array;
  manifest: Manifest;
  envelope: ReturnType<typeof signManifest>;
}

let fs: Tmpfs;
let broker: Mosquitto;
let relay: CountingRelay;
let fleet: MqttClient;
let collector: MqttClient;
let keys: FleetKeys;
let configDir: string;
let agent: ChildAgent | undefined;
const versions = new Map<number, Version>();
let state: ReportedState | undefined;
const events: { type: string; model?: string; version?: number; detail?: string }[] = [];
/** Telemetry points as the collector received them (duplicates included: delivery is at-least-once). */
const points: { seq: number; kind: string; count?: number }[] = [];
let serial = 0;

const config = (): Record<string, unknown> => ({
  deviceId: DEVICE,
  stateDir: join(fs.dir, 'state'),
  trust: join(configDir, 'trust.json'),
  mqtt: { url: relay.url, topicRoot: ROOT },
  rollout: { window: 2, blockTimeoutMs: 2_000, healthWindowS: 3, retryBaseMs: 200, retryMaxMs: 1_000 },
  telemetry: { intervalS: 1, health: { schedule: '* * * * * *' }, upload: { debounceMs: 50, periodMs: 500 } },
  log: { level: 'info' },
});

beforeAll(async () => {
  if (skip) return;
  fs = mounted as Tmpfs;
  broker = await startMosquitto();
  relay = await startCountingRelay(broker.port, { downBytesPerSecond: LINK_BYTES_PER_S });
  fleet = await connectFleet(broker.url);
  keys = makeFleetKeys();
  configDir = await mkdtemp(join(tmpdir(), 'edgefleet-full-disk-'));
  await writeTrust(join(configDir, 'trust.json'), keys);
  // One input signature (x: [batch, 784]) for every version; version 2 is the big one (6.5 MB).
  for (const [version, hidden] of [[1, 64], [2, 2048], [3, 96]] as const) {
    const bytes = mlpModel({ hidden, seed: version });
    const manifest = buildManifest(MODEL, version, bytes, {}, 64 * 1024);
    versions.set(version, { bytes, manifest, envelope: signManifest(manifest, [keys.models]) });
    await publishBlocks(fleet, ROOT, manifest, bytes);
  }
  await fleet.subscribeAsync([`${ROOT}/devices/${DEVICE}/state`, `${ROOT}/devices/${DEVICE}/events`], { qos: 1 });
  fleet.on('message', (topic, payload) => {
    if (payload.length === 0) return;
    if (topic.endsWith('/state')) state = parseReportedState(payload);
    else events.push(JSON.parse(payload.toString()) as (typeof events)[number]);
  });
  // A persistent session, so points published while it reconnects after a broker restart wait for it.
  collector = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: 'collector-full-disk', clean: false, properties: { sessionExpiryInterval: 600 }, reconnectPeriod: 200 });
  await collector.subscribeAsync(`${ROOT}/devices/${DEVICE}/telemetry`, { qos: 1 });
  collector.on('message', (_topic, payload) => points.push(...(JSON.parse(payload.toString()) as { points: typeof points }).points));
}, 60_000);

afterAll(async () => {
  if (skip) return;
  traffic.stopped = true;
  await stopAgent('SIGKILL');
  await collector?.endAsync();
  await fleet?.endAsync();
  await relay?.close();
  await broker?.stop();
  await fs.unmount();
  await rm(configDir, { recursive: true, force: true });
});

async function stopAgent(signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  const a = agent;
  agent = undefined;
  if (!a || a.proc.exitCode !== null || a.proc.signalCode !== null) return undefined;
  a.proc.kill(signal);
  return a.exited;
}

async function deploy(...listed: number[]): Promise<number> {
  serial++;
  const models = listed.map((v) => ({ name: MODEL, version: v, manifest: (versions.get(v) as Version).envelope }));
  await publishDesired(fleet, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial, models }, [keys.rollout]));
  return serial;
}

const desiredIs = (s: number, status: string) => () => state?.desired?.serial === s && state.desired.status === status && state.desired;
const model = (v: number) => state?.models.find((m) => m.name === MODEL && m.version === v);

const BODY = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', data: new Array(784).fill(0.5) }] });

/** One inference on the default version; resolves with the HTTP status and the version that answered. */
async function infer(): Promise<{ status: number; version: string | undefined }> {
  const url = (agent as ChildAgent).url;
  const res = await fetch(`${url}/v2/models/${MODEL}/infer`, { method: 'POST', body: BODY });
  const json = (await res.json()) as { model_version?: string };
  return { status: res.status, version: json.model_version };
}

/** Requests the whole time the agent runs (paused across restarts): every answer must be a 200. */
const traffic = { answers: 0, failures: [] as string[], paused: true, stopped: false };
async function driveTraffic(): Promise<void> {
  while (!traffic.stopped) {
    if (traffic.paused || !agent) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    try {
      const { status } = await infer();
      if (status === 200) traffic.answers++;
      else traffic.failures.push(`HTTP ${status}`);
    } catch (err) {
      if (!traffic.paused) traffic.failures.push((err as Error).message);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function restartAgent(): Promise<void> {
  traffic.paused = true;
  // SIGTERM: a clean stop (exit 0) even with the filesystem full.
  expect(await stopAgent('SIGTERM')).toEqual({ code: 0, signal: null });
  agent = await spawnAgent(configDir, config());
  traffic.paused = false;
}

/** A reported error for a full disk: the filesystem (the tmpfs), the file, the bytes. */
const noSpace = (): RegExp => new RegExp(`^no space left on ${fs.dir} for ${fs.dir}/state/\\S+: needs \\d+ bytes`);

describe.skipIf(skip)('the agent on a full state filesystem', () => {
  it('keeps serving through a pull, an activation and telemetry buffering on a full disk, restarts on it, and loses no stored telemetry', async () => {
    void driveTraffic();
    agent = await spawnAgent(configDir, config());

    // Given: version 1 deployed and answering.
    const s1 = await deploy(1);
    await waitFor(desiredIs(s1, 'applied'), 30_000, 'serial 1 applied');
    traffic.paused = false;
    expect(await infer()).toEqual({ status: 200, version: '1' });

    // 1. The filesystem fills during a pull: reported failed with why, version 1 serves, the pull resumes once there is room.
    const s2 = await deploy(2);
    await waitFor(() => (model(2)?.state === 'downloading' && (model(2)?.progress ?? 0) >= 0.2) || undefined, 30_000, 'the pull of version 2 under way');
    fs.fill();
    const pullFailed = await waitFor(desiredIs(s2, 'failed'), 20_000, 'serial 2 failed for lack of space');
    expect(pullFailed.error).toMatch(noSpace());
    expect(model(2)?.error).toMatch(noSpace());
    expect(await infer()).toEqual({ status: 200, version: '1' });
    const sha2 = (versions.get(2) as Version).manifest.artifact.sha256;
    expect(await readdir(join(fs.dir, 'state', 'staging'))).toEqual([`${sha2}.part`]); // kept: the pull resumes from it
    await fs.free();
    await waitFor(desiredIs(s2, 'applied'), 60_000, 'serial 2 applied once there is room');
    expect(await infer()).toEqual({ status: 200, version: '2' });
    expect(await readdir(join(fs.dir, 'state', 'staging'))).toEqual([]);

    // 2. Telemetry buffers (broker away) and the filesystem fills: stored points wait, new ones are refused and counted.
    await waitFor(() => points.length > 5 || undefined, 20_000, 'telemetry flowing');
    await broker.halt();
    await new Promise((r) => setTimeout(r, 3_000)); // points pile up in the outbox
    fs.fill();
    await new Promise((r) => setTimeout(r, 3_000)); // points are refused
    expect(await infer()).toEqual({ status: 200, version: '2' });
    await fs.free();
    await broker.start();
    const dropped = await waitFor(() => points.find((p) => p.kind === 'dropped'), 30_000, 'a dropped point after the broker is back');
    expect(dropped.count).toBeGreaterThan(0);
    const afterDropped = dropped.seq + 3;
    await waitFor(() => points.some((p) => p.seq >= afterDropped) || undefined, 20_000, 'points after the dropped report');
    const seqs = [...new Set(points.map((p) => p.seq))].sort((a, b) => a - b);
    // Every point the agent stored reached the collector: a gap would be a point lost.
    expect(seqs[0]).toBe(1);
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));

    // 3. The filesystem fills during an activation's health window: the switch stands and is recorded.
    const s3 = await deploy(3);
    await waitFor(() => (model(3)?.state === 'serving' && events.some((e) => e.type === 'activated' && e.version === 3)) || undefined, 30_000, 'version 3 switched in');
    fs.fill();
    await waitFor(desiredIs(s3, 'applied'), 20_000, 'serial 3 applied at the end of its window');
    expect(await infer()).toEqual({ status: 200, version: '3' });

    // 4. A new desired document on a full disk: not recorded, so reported failed; nothing changes.
    fs.fill(); // what the end of the window freed
    const s4 = await deploy(2);
    const docFailed = await waitFor(desiredIs(s4, 'failed'), 20_000, 'serial 4 failed for lack of space');
    expect(docFailed.error).toMatch(noSpace());
    expect(await infer()).toEqual({ status: 200, version: '3' });

    // 5. Restart on the full disk: it starts, serves version 3 (not rolled back), and stays up.
    await restartAgent();
    expect(await infer()).toEqual({ status: 200, version: '3' });
    await new Promise((r) => setTimeout(r, 3_000));
    expect(agent.proc.exitCode).toBeNull();
    await waitFor(desiredIs(s4, 'failed'), 20_000, 'serial 4 still failed after the restart');
    expect(await infer()).toEqual({ status: 200, version: '3' });

    // 6. Room again: the waiting document goes through (version 2 is on disk: no download).
    await fs.free();
    await waitFor(desiredIs(s4, 'applied'), 30_000, 'serial 4 applied once there is room');
    expect(await infer()).toEqual({ status: 200, version: '2' });

    // Every point stored over the whole run reached the collector.
    await waitFor(() => points.some((p) => p.seq > Math.max(...seqs) + 5) || undefined, 20_000, 'telemetry after the restart');
    const all = [...new Set(points.map((p) => p.seq))].sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: all.length }, (_, i) => i + 1));

    expect(traffic.failures).toEqual([]);
    expect(traffic.answers).toBeGreaterThan(100);
    const log = agent.output();
    if (process.env.EDGEFLEET_TEST_VERBOSE !== undefined) console.log({ pullFailed: pullFailed.error, docFailed: docFailed.error, dropped, answers: traffic.answers, points: points.length }, log);
    expect(log).not.toMatch(/uncaught exception|"level":60/);
  }, 240_000);

  it('starts for the first time on a full disk: serves its local models, and a rollout reports failed', async () => {
    await stopAgent('SIGKILL');
    const modelsDir = join(configDir, 'models');
    await writeModelTree(modelsDir, 'local', 1, mlpModel({ hidden: 32 }));
    fs.fill();
    const fresh = await spawnAgent(configDir, { ...config(), deviceId: 'disk-fresh', stateDir: join(fs.dir, 'fresh-state'), models: { dir: modelsDir, settleMs: 0 } });
    try {
      const res = await fetch(`${fresh.url}/v2/models/local/infer`, { method: 'POST', body: BODY });
      expect(res.status).toBe(200);
      const s = ++serial;
      await publishDesired(fleet, ROOT, { device: 'disk-fresh' }, signDesired({ target: { device: 'disk-fresh' }, serial: s, models: [{ name: MODEL, version: 1, manifest: (versions.get(1) as Version).envelope }] }, [keys.rollout]));
      await fleet.subscribeAsync(`${ROOT}/devices/disk-fresh/state`, { qos: 1 }); // `state` follows this device from here on
      const reported = await waitFor(() => state?.device === 'disk-fresh' && state.desired?.serial === s && state.desired.status === 'failed' && state.desired, 20_000, 'the document reported failed for lack of space');
      expect(reported.error).toMatch(new RegExp(`^no space left on ${fs.dir} for ${fs.dir}/fresh-state/agent.db \\(\\d+ bytes free\\); the state database could not be created or migrated`));
      expect(fresh.output()).toMatch(/state database opened read-only/);
      await new Promise((r) => setTimeout(r, 2_000));
      expect(fresh.proc.exitCode).toBeNull();
      expect((await fetch(`${fresh.url}/v2/models/local/infer`, { method: 'POST', body: BODY })).status).toBe(200);
    } finally {
      fresh.proc.kill('SIGKILL');
      await fresh.exited;
      await fs.free();
    }
  }, 60_000);
});
