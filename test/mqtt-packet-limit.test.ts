import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_MQTT_PACKET_BYTES } from '../agent/config/schema.js';
import { RefusalLimiter, type RefusedMessage } from '../agent/rollout/refused-messages.js';
import { scaleModel } from '../models/onnx/zoo.js';
import { topics } from '../protocol/names.js';
import { spawnAgent, type ChildAgent } from './helpers/child.js';
import { buildManifest, publishBlocks, signManifest } from './helpers/fleet.js';
import { startFleetHarness, type FleetHarness } from './helpers/fleet-harness.js';
import { mosquittoSkipReason } from './helpers/mosquitto.js';

/**
 * A 40 MB retained message on a topic the agent subscribes to (its desired
 * document here) must cost the agent next to no memory on either MQTT version:
 * on MQTT 5 the broker does not send it (Maximum Packet Size), on 3.1.1 the
 * agent streams it away unread and acknowledges it. Meanwhile the HTTP API
 * answers, and a normal desired document published after it still applies.
 * The agent is a real child process, so its memory is its own.
 */

const skip = mosquittoSkipReason();
const ROOT = 'edgefleet';
const DEVICE = 'pi-big';
const BIG = 40 * 1024 * 1024;
/** Peak RSS growth allowed while the big message goes by. */
const MAX_GROWTH = 100 * 1024 * 1024;

let h: FleetHarness | undefined;
let child: ChildAgent | undefined;
let dir: string | undefined;

afterEach(async () => {
  if (child && child.proc.exitCode === null && child.proc.signalCode === null) {
    child.proc.kill('SIGTERM');
    await child.exited;
  }
  await h?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
  child = h = dir = undefined;
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A kB field of /proc/{pid}/status, in bytes. */
async function procStatus(pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1];
  if (kb === undefined) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(kb) * 1024;
}

async function waitFor<T>(check: () => Promise<T | undefined | false> | T | undefined | false, what: string, timeoutMs = 20_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** GETs /v2/health/live back to back until stopped; every answer and its latency. */
function probeHttp(url: string): { stop: () => Promise<{ ok: number; failed: string[]; latencies: number[] }> } {
  let running = true;
  const latencies: number[] = [];
  const failed: string[] = [];
  let ok = 0;
  const loop = (async () => {
    while (running) {
      const started = performance.now();
      try {
        const res = await fetch(`${url}/v2/health/live`, { signal: AbortSignal.timeout(5_000) });
        await res.arrayBuffer();
        if (res.status === 200) ok++;
        else failed.push(`status ${res.status}`);
      } catch (err) {
        failed.push((err as Error).message);
      }
      latencies.push(performance.now() - started);
      await sleep(20);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { ok, failed, latencies };
    },
  };
}

const quantile = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))] ?? NaN;

/** A DSSE-looking envelope of about `bytes` bytes: what today's parser would take apart. */
function bigEnvelope(bytes: number): Buffer {
  const head = '{"payloadType":"application/vnd.edgefleet.desired+json","signatures":[],"payload":"';
  return Buffer.concat([Buffer.from(head), Buffer.alloc(bytes - head.length - 2, 'A'), Buffer.from('"}')]);
}

describe.skipIf(skip).each([
  { protocolVersion: 5 as const, name: 'MQTT 5' },
  { protocolVersion: 4 as const, name: 'MQTT 3.1.1' },
])('a 40 MB retained desired document over $name', ({ protocolVersion }) => {
  it('costs the agent under 100 MB, HTTP keeps answering, and the next document applies', async () => {
    // The broker itself takes packets up to 64 MiB, so the big message reaches it.
    const harness = (h = await startFleetHarness({ root: ROOT, maxPacketBytes: 64 * 1024 * 1024, logTypes: ['notice', 'subscribe'] }));
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-big-'));

    child = await spawnAgent(dir, {
      deviceId: DEVICE,
      trust: harness.trustFile,
      mqtt: { url: harness.broker.url, topicRoot: ROOT, protocolVersion },
      log: { level: 'info' },
    });
    const pid = child.proc.pid as number;
    await waitFor(() => harness.statuses.get(DEVICE)?.online, 'the agent online');
    const desiredTopic = topics.device(ROOT, DEVICE, 'desired');
    const logFile = harness.broker.logFile as string;
    await waitFor(async () => (await readFile(logFile, 'utf8')).includes(desiredTopic), "the agent's subscription to its desired topic");
    await sleep(500); // let start-up allocations settle before the baseline

    // Peak RSS from here on: writing 5 to clear_refs resets VmHWM to the current RSS.
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    const before = await procStatus(pid, 'VmRSS');
    const probe = probeHttp(child.url);
    await harness.fleet.publishAsync(desiredTopic, bigEnvelope(BIG), { qos: 1, retain: true });

    // A normal document after it: blocks, manifest, desired, as a fleet publishes them.
    const bytes = scaleModel(2);
    const manifest = buildManifest('scale', 1, bytes, { selfTest: { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 1], data: [1] }], outputs: [{ name: 'y', datatype: 'FP32', shape: [1, 1], data: [2] }], atol: 1e-4, rtol: 1e-3 } });
    await publishBlocks(harness.fleet, ROOT, manifest, bytes);
    await harness.deploy(DEVICE, 1, [{ name: 'scale', version: 1, manifest: signManifest(manifest, [harness.keys.models]) }]);
    const url = child.url;
    await waitFor(async () => (await fetch(`${url}/v2/models/scale/versions/1/ready`)).status === 200, 'scale version 1 to serve', 30_000);
    await sleep(300);

    const http = await probe.stop();
    const peak = await procStatus(pid, 'VmHWM');
    const growth = peak - before;
    const brokerLog = await readFile(logFile, 'utf8');
    console.log(
      `${protocolVersion === 5 ? 'MQTT 5' : 'MQTT 3.1.1'}: RSS before ${(before / 2 ** 20).toFixed(1)} MiB, peak after ${(peak / 2 ** 20).toFixed(1)} MiB ` +
        `(growth ${(growth / 2 ** 20).toFixed(1)} MiB); HTTP ${http.ok} ok, ${http.failed.length} failed, ` +
        `p50 ${quantile(http.latencies, 0.5).toFixed(1)} ms, max ${Math.max(...http.latencies).toFixed(1)} ms`,
    );

    expect(growth).toBeLessThan(MAX_GROWTH);
    expect(http.failed).toEqual([]);
    expect(http.ok).toBeGreaterThan(5);
    expect(Math.max(...http.latencies)).toBeLessThan(1_000);
    const infer = await fetch(`${url}/v2/models/scale/infer`, { method: 'POST', body: JSON.stringify({ inputs: [{ name: 'x', shape: [1, 1], datatype: 'FP32', data: [3] }] }) });
    expect(((await infer.json()) as { outputs: { data: number[] }[] }).outputs[0]?.data).toEqual([6]);

    const refusals = child.output().split('\n').filter((l) => l.includes('mqtt.maxPacketBytes'));
    if (protocolVersion === 5) {
      // The broker honoured the Maximum Packet Size the agent asked for: nothing reached the agent.
      expect(brokerLog).toContain(`Dropping too large outgoing PUBLISH for ${DEVICE}`);
      expect(refusals).toEqual([]);
      expect(harness.events.filter((e) => e.type === 'message.refused')).toEqual([]);
    } else {
      expect(refusals).toHaveLength(1);
      const line = JSON.parse(refusals[0] as string) as Record<string, unknown>;
      expect(line).toMatchObject({ level: 50, topic: desiredTopic, limit: DEFAULT_MQTT_PACKET_BYTES, qos: 1 });
      expect(line.bytes).toBeGreaterThan(BIG);
      // The fleet hears why the device ignores the document: one event naming the topic, the size and the limit.
      const refusedEvents = () => harness.events.filter((e) => e.device === DEVICE && e.type === 'message.refused');
      await waitFor(() => refusedEvents().length > 0, 'a message.refused event');
      const refused = refusedEvents();
      expect(refused).toHaveLength(1);
      expect(refused[0]?.detail).toBe(`message on ${desiredTopic} refused: ${String(line.bytes)} bytes is over the limit of ${DEFAULT_MQTT_PACKET_BYTES} bytes (mqtt.maxPacketBytes); dropped unread`);
    }
  }, 120_000);
});

describe('reports of refused messages', () => {
  const message = (topic: string): RefusedMessage => ({ topic, bytes: 2_000_000, limit: DEFAULT_MQTT_PACKET_BYTES });

  it('are at most one per topic a minute, the held-back ones counted in the next, and at most 10 a minute in all', () => {
    let now = 0;
    const limiter = new RefusalLimiter({ now: () => now });
    expect(limiter.offer(message('edgefleet/devices/pi/desired'))).toEqual({ ...message('edgefleet/devices/pi/desired'), suppressed: 0 });
    // The broker sends it again on each of 5 reconnects within the minute: held back.
    for (let i = 0; i < 5; i++) {
      now += 10_000;
      expect(limiter.offer(message('edgefleet/devices/pi/desired'))).toBeUndefined();
    }
    now = 60_000;
    expect(limiter.offer(message('edgefleet/devices/pi/desired'))).toMatchObject({ suppressed: 5 });
    // Many topics at once (trust versions): 9 more fit in this minute, the rest wait.
    const reported = Array.from({ length: 20 }, (_, i) => limiter.offer(message(`edgefleet/trust/${i + 2}`))).filter((r) => r !== undefined);
    expect(reported).toHaveLength(9);
    now = 120_000;
    expect(limiter.offer(message('edgefleet/trust/15'))).toMatchObject({ suppressed: 1 });
  });
});
