import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../protocol/manifest.js';
import { parseReportedState, type ReportedState } from '../protocol/reported.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { REPO, spawnAgent, type ChildAgent } from './helpers/child.js';
import { buildManifest, connectFleet, makeFleetKeys, publishBlocks, publishDesired, signDesired, signManifest, writeTrust, type FleetKeys } from './helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { startCountingRelay, type CountingRelay } from './helpers/relay.js';

/**
 * Resuming an interrupted artifact pull (docs/protocol.md section 5): "After a
 * restart or a lost connection it asks only for the blocks not yet recorded."
 *
 * The broker here logs every SUBSCRIBE (client id, QoS, topic) and, at debug
 * level, every PUBLISH it sends with its size, so the test counts which blocks
 * each agent asked for and how many bytes it was sent, from outside the agent.
 */

const ROOT = 'edgefleet';
const MODEL = 'ocr-rec';
const ARTIFACT = join(REPO, 'node_modules', '@gutenye', 'ocr-models', 'assets', 'ch_PP-OCRv4_rec_infer.onnx');
const BLOCK_SIZE = 64 * 1024;
/** Blocks subscribed at once: at most this many are in flight when the pull is cut. */
const WINDOW = 2;
/** Cut the pull once the reported progress passes this. */
const CUT_AT = 0.3;
/**
 * The agent reaches the broker through a link this slow (broker → agent), as
 * over a cellular modem, so a pull takes seconds and can be cut part way; on
 * loopback the 10.8 MB arrive in a fraction of a second.
 */
const LINK_BYTES_PER_S = 2.5 * 1024 * 1024;

/** Mosquitto logging every SUBSCRIBE and (at debug level) every PUBLISH it sends, read back by the test. */
interface LoggedBroker extends Mosquitto {
  /** Byte length of the log now: a mark to read "what happened after". */
  mark(): number;
  subscriptions(clientId: string, since?: number): string[];
  sentBytes(clientId: string, topicPrefix: string, since?: number): { messages: number; bytes: number };
}

async function startLoggedBroker(): Promise<LoggedBroker> {
  const broker = await startMosquitto({ logTypes: ['subscribe', 'debug'] });
  const logFile = broker.logFile as string;
  const read = (since = 0): string[] => readFileSync(logFile).subarray(since).toString('utf8').split('\n');
  return Object.assign(broker, {
    mark: () => readFileSync(logFile).length,
    subscriptions(clientId: string, since = 0): string[] {
      const out: string[] = [];
      for (const line of read(since)) {
        // log_type subscribe: "<client id> <qos> <topic filter>"
        const m = /^(\S+) (\d) (\S+)$/.exec(line);
        if (m?.[1] === clientId && m[3] !== undefined) out.push(m[3]);
      }
      return out;
    },
    sentBytes(clientId: string, topicPrefix: string, since = 0): { messages: number; bytes: number } {
      let messages = 0;
      let bytes = 0;
      for (const line of read(since)) {
        const m = /^Sending PUBLISH to (\S+) \(d\d, q\d, r\d, m\d+, '([^']*)', \.\.\. \((\d+) bytes\)\)$/.exec(line);
        if (m?.[1] === clientId && m[2]?.startsWith(topicPrefix)) {
          messages++;
          bytes += Number(m[3]);
        }
      }
      return { messages, bytes };
    },
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Blocks recorded done in the agent's database (docs/protocol.md section 5: "records it as done in durable storage"). */
function recordedBlocks(stateDir: string, sha256: string): Set<number> {
  const db = new Database(join(stateDir, 'agent.db'), { readonly: true, fileMustExist: true });
  try {
    const rows = db.prepare<[string], { idx: number }>('SELECT idx FROM artifact_blocks WHERE sha256 = ?').all(sha256);
    return new Set(rows.map((r) => r.idx));
  } finally {
    db.close();
  }
}

/** Block indexes of `sha256` in a list of subscribed topics. */
function blockIndexes(topicsSubscribed: readonly string[], sha256: string): number[] {
  const prefix = `${ROOT}/artifacts/${sha256}/blocks/`;
  return topicsSubscribed.filter((t) => t.startsWith(prefix)).map((t) => Number(t.slice(prefix.length)));
}

const skip = mosquittoSkipReason();
let broker: LoggedBroker;
let link: CountingRelay;
let fleet: MqttClient;
let keys: FleetKeys;
let bytes: Buffer;
let manifest: Manifest;
let envelope: ReturnType<typeof signManifest>;
let trustFile: string;
const states = new Map<string, ReportedState>();

beforeAll(async () => {
  if (skip) return;
  broker = await startLoggedBroker();
  link = await startCountingRelay(broker.port, { downBytesPerSecond: LINK_BYTES_PER_S });
  fleet = await connectFleet(broker.url);
  keys = makeFleetKeys();
  trustFile = join(await mkdtemp(join(tmpdir(), 'edgefleet-trust-')), 'trust.json');
  await writeTrust(trustFile, keys);
  bytes = await readFile(ARTIFACT);
  manifest = buildManifest(MODEL, 1, bytes, {}, BLOCK_SIZE);
  envelope = signManifest(manifest, [keys.models]);
  await publishBlocks(fleet, ROOT, manifest, bytes);
  await fleet.subscribeAsync(`${ROOT}/devices/+/state`, { qos: 1 });
  fleet.on('message', (topic, payload) => {
    const m = /^edgefleet\/devices\/([^/]+)\/state$/.exec(topic);
    if (m?.[1] && payload.length > 0) states.set(m[1], parseReportedState(payload));
  });
}, 60_000);

afterAll(async () => {
  await fleet?.endAsync();
  await link?.close();
  await broker?.stop();
  if (trustFile) await rm(join(trustFile, '..'), { recursive: true, force: true });
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function deploy(device: string): Promise<void> {
  await publishDesired(fleet, ROOT, { device }, signDesired({ target: { device }, serial: 1, models: [{ name: MODEL, version: 1, manifest: envelope }] }, [keys.rollout]));
}

/** The reported download progress of the model, once it passes CUT_AT. */
const progressPast = (device: string, share: number) => () => {
  const m = states.get(device)?.models.find((x) => x.name === MODEL && x.version === 1);
  return m?.state === 'downloading' && m.progress >= share && m.progress < 1 && m.progress;
};

/**
 * What "asks only for the blocks not yet recorded" means, given the blocks
 * recorded done at the cut, the block topics subscribed before and after it,
 * and the bytes the broker sent the device over both.
 */
function expectResumed(cut: { done: Set<number>; before: number[]; after: number[]; sentBytes: number }): void {
  const { done, before, after, sentBytes } = cut;
  const total = manifest.artifact.blockSha256.length;
  const missing = [...Array(total).keys()].filter((i) => !done.has(i));
  expect(done.size).toBeGreaterThan(0);
  expect(missing.length).toBeGreaterThan(0);
  // A block recorded done is never asked for again.
  expect(after.filter((i) => done.has(i))).toEqual([]);
  // Each missing block is asked for once (no timeouts here)...
  expect(after.length).toBe(new Set(after).size);
  // ...except those asked for just before the cut, which the broker may hand
  // over again from the device's persistent session without a new SUBSCRIBE.
  const notAskedAgain = missing.filter((i) => !after.includes(i));
  expect(notAskedAgain.filter((i) => !before.includes(i))).toEqual([]);
  expect(notAskedAgain.length).toBeLessThanOrEqual(WINDOW);
  // The artifact crossed the wire about once. Worst case beyond it: the
  // window in flight at the cut (sent, lost), the same window again from the
  // persistent session, and a block or two received but not yet fsynced.
  expect(sentBytes).toBeGreaterThanOrEqual(bytes.length);
  expect(sentBytes).toBeLessThanOrEqual(bytes.length + (2 * WINDOW + 2) * BLOCK_SIZE);
  expect(sentBytes).toBeLessThanOrEqual(1.05 * bytes.length);
}

const verbose = process.env.EDGEFLEET_TEST_VERBOSE !== undefined;

const applied = (device: string) => () => {
  const s = states.get(device);
  return s?.desired?.serial === 1 && s.desired.status === 'applied' && s;
};

describe.skipIf(skip)('resuming an interrupted artifact pull', () => {
  const total = () => manifest.artifact.blockSha256.length;

  it('after kill -9 of the agent process mid-pull asks only for the blocks not recorded done', async () => {
    const device = 'pi-kill';
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-resume-kill-'));
    const stateDir = join(dir, 'state');
    const config = {
      deviceId: device,
      stateDir,
      trust: trustFile,
      mqtt: { url: link.url, topicRoot: ROOT },
      rollout: { window: WINDOW, blockTimeoutMs: 5_000, healthWindowS: 0 },
      log: { level: 'warn' },
    };
    let agent: ChildAgent | undefined = await spawnAgent(dir, config);
    cleanups.push(async () => {
      if (agent && agent.proc.exitCode === null && agent.proc.signalCode === null) {
        agent.proc.kill('SIGKILL');
        await agent.exited;
      }
      await rm(dir, { recursive: true, force: true });
    });
    const started = Date.now();
    await deploy(device);
    const progress = await waitFor(progressPast(device, CUT_AT), 30_000, `reported progress past ${CUT_AT}`);
    agent.proc.kill('SIGKILL');
    expect(await agent.exited).toEqual({ code: null, signal: 'SIGKILL' });
    const cutAfterMs = Date.now() - started;
    const done = recordedBlocks(stateDir, manifest.artifact.sha256);
    const firstRun = blockIndexes(broker.subscriptions(device), manifest.artifact.sha256);
    await sleep(300); // the broker notices the dead socket
    const mark = broker.mark();

    agent = await spawnAgent(dir, config);
    await waitFor(applied(device), 40_000, 'the restarted agent to apply serial 1');
    const secondRun = blockIndexes(broker.subscriptions(device, mark), manifest.artifact.sha256);
    const sent = broker.sentBytes(device, `${ROOT}/artifacts/`);
    if (verbose) console.log({ device, blocks: total(), progress, cutAfterMs, recordedAtCut: done.size, requestsBefore: firstRun.length, requestsAfter: secondRun.length, sent, size: bytes.length });
    expectResumed({ done, before: firstRun, after: secondRun, sentBytes: sent.bytes });
    expect((await fetch(`${agent.url}/v2/models/${MODEL}/ready`)).status).toBe(200);
    // The resumed file is the real recognizer: one 48×320 text line in, per-position character scores out.
    const meta = (await (await fetch(`${agent.url}/v2/models/${MODEL}`)).json()) as { inputs: { name: string }[] };
    const input = { name: meta.inputs[0]?.name, shape: [1, 3, 48, 320], datatype: 'FP32', data: new Array(3 * 48 * 320).fill(0.5) };
    const res = await fetch(`${agent.url}/v2/models/${MODEL}/infer`, { method: 'POST', body: JSON.stringify({ inputs: [input] }) });
    expect(res.status).toBe(200);
    const out = (await res.json()) as { model_version: string; outputs: { shape: number[] }[] };
    expect(out.model_version).toBe('1');
    expect(out.outputs[0]?.shape).toEqual([1, 40, expect.any(Number)]);
  }, 90_000);

  it('after a broker restart mid-pull asks only for the blocks not recorded done', async () => {
    const device = 'pi-broker';
    const t: TestAgent = await startTestAgent({ deviceId: device, trust: trustFile, mqtt: { url: link.url, topicRoot: ROOT }, rollout: { window: WINDOW, blockTimeoutMs: 5_000, healthWindowS: 0 } });
    cleanups.push(() => t.close());
    const stateDir = join(t.dir, 'state');
    const started = Date.now();
    await deploy(device);
    const progress = await waitFor(progressPast(device, CUT_AT), 30_000, `reported progress past ${CUT_AT}`);
    await broker.halt();
    link.cut();
    const cutAfterMs = Date.now() - started;
    await sleep(300); // blocks already received are written and recorded
    const done = recordedBlocks(stateDir, manifest.artifact.sha256);
    const mark = broker.mark();
    const before = blockIndexes(broker.subscriptions(device), manifest.artifact.sha256);
    await broker.start();

    await waitFor(applied(device), 40_000, 'the agent to apply serial 1 after the broker restart');
    const after = blockIndexes(broker.subscriptions(device, mark), manifest.artifact.sha256);
    const sent = broker.sentBytes(device, `${ROOT}/artifacts/`);
    if (verbose) console.log({ device, blocks: total(), progress, cutAfterMs, recordedAtCut: done.size, requestsBefore: before.length, requestsAfter: after.length, sent, size: bytes.length });
    expectResumed({ done, before, after, sentBytes: sent.bytes });
    expect(t.agent.registry.servables().map((s) => `${s.name}@${s.version}`)).toEqual([`${MODEL}@1`]);
    expect((await fetch(`${t.url}/v2/models/${MODEL}/ready`)).status).toBe(200);
  }, 90_000);
});
