/**
 * Shadow evaluation benchmark (docs/protocol.md section 11): what running a
 * candidate beside the serving version costs the requests being served.
 *
 * The real agent runs in its own process (bench/agent-child.ts, pinned like
 * the serving benchmark's servers), joined to a loopback Mosquitto. It serves
 * version 1 of an MNIST-shaped MLP (784-128-10); the closed-loop load
 * generator (bench/load.ts) sends v2 JSON requests. "off": version 1 alone.
 * "shadow": a desired document lists version 2 (other weights) with
 * `shadow: { sampleRate: 1.0, minSamples: 1e6, maxDurationS: 3600 }`, so
 * every answered request is offered to the candidate for the whole window
 * and no verdict comes. Between windows a document without version 2 ends
 * the evaluation (superseded; the candidate is released) and the next one
 * starts it again, so off and shadow windows interleave round by round. The
 * table gives the served latency of each and the ratio (median of per-round
 * ratios), and the share of sampled requests the candidate ran rather than
 * skipped (at most one run in flight: a busy candidate skips samples), from
 * the agent's `shadow` points (warm-up included).
 * BENCH_QUICK=1: 1 round of 2 s windows. Run alone: `npx tsx bench/shadow.ts`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MqttClient } from 'mqtt';
import { mlpModel } from '../models/onnx/zoo.js';
import { topics } from '../protocol/names.js';
import { parseReportedState, parseTelemetryBatch, type ReportedState, type ShadowPoint } from '../protocol/reported.js';
import { buildManifest, connectFleet, makeFleetKeys, publishBlocks, publishDesired, signDesired, signManifest, writeTrust, type DesiredEntry, type FleetKeys } from '../test/helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto } from '../test/helpers/mosquitto.js';
import { startChild } from './child.js';
import { runLoad, type WindowResult } from './load.js';
import { benchSettings } from './settings.js';
import { fmt, printTable, type Cell } from './table.js';

const ROOT = 'edgefleet';
const DEVICE = 'bench-shadow';
const CLIENTS = [1, 8];
const SHADOW = { sampleRate: 1, minSamples: 1_000_000, maxDurationS: 3600, compare: 'argmax' as const };

interface ShadowCounts {
  samples: number;
  skipped: number;
}

interface Fleet {
  client: MqttClient;
  keys: FleetKeys;
  state: () => ReportedState | undefined;
  /** The latest `shadow` point's counts (cumulative for the evaluation running). */
  shadowPoint: () => ShadowCounts;
  serial: number;
}

async function until(check: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function deploy(fleet: Fleet, models: DesiredEntry[]): Promise<number> {
  const serial = ++fleet.serial;
  await publishDesired(fleet.client, ROOT, { device: DEVICE }, signDesired({ target: { device: DEVICE }, serial, models }, [fleet.keys.rollout]));
  return serial;
}

async function release(fleet: Fleet, version: number, seed: number): Promise<DesiredEntry> {
  const bytes = mlpModel({ seed });
  const manifest = buildManifest('mlp', version, bytes, {}, 64 * 1024);
  await publishBlocks(fleet.client, ROOT, manifest, bytes);
  return { name: 'mlp', version, manifest: signManifest(manifest, [fleet.keys.models]) };
}

function body(seed: number): Buffer {
  const data = Array.from({ length: 784 }, (_, i) => ((i * 31 + seed * 17) % 256) / 255);
  return Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', data }] }));
}

export async function runShadowBench(): Promise<void> {
  const skip = mosquittoSkipReason();
  if (skip) {
    console.log(`\n[shadow] skipped: ${skip}`);
    return;
  }
  const settings = benchSettings();
  const windowMs = settings.quick ? 2000 : 5000;
  const rounds = settings.quick ? 1 : 3;
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-shadow-'));
  const broker = await startMosquitto();
  const client = await connectFleet(broker.url);
  const keys = makeFleetKeys();
  const trustFile = join(dir, 'trust.json');
  await writeTrust(trustFile, keys);
  let state: ReportedState | undefined;
  let point: ShadowCounts = { samples: 0, skipped: 0 };
  client.on('message', (topic, payload) => {
    if (payload.length === 0) return;
    if (topic.endsWith('/state')) state = parseReportedState(payload);
    else {
      parseTelemetryBatch(payload); // checked against the schema; the agent's extra `skipped` is read from the raw JSON
      const raw = JSON.parse(payload.toString('utf8')) as { points: (Partial<ShadowPoint> & { skipped?: number })[] };
      for (const p of raw.points) if (p.kind === 'shadow') point = { samples: p.samples ?? 0, skipped: p.skipped ?? 0 };
    }
  });
  await client.subscribeAsync([topics.device(ROOT, DEVICE, 'state'), topics.device(ROOT, DEVICE, 'telemetry')], { qos: 1 });
  const fleet: Fleet = { client, keys, state: () => state, shadowPoint: () => point, serial: 0 };
  const config = {
    deviceId: DEVICE,
    stateDir: join(dir, 'state'),
    trust: trustFile,
    mqtt: { url: broker.url, topicRoot: ROOT },
    http: { port: 0 },
    runtime: { executionProviders: ['cpu'], intraOpNumThreads: settings.threads },
    rollout: { healthWindowS: 0 },
    telemetry: { intervalS: 1 },
  };
  const agent = await startChild('agent-child.ts', [JSON.stringify(config)], settings.pin?.server);
  try {
    const v1 = await release(fleet, 1, 1);
    const v2 = { ...(await release(fleet, 2, 2)), shadow: SHADOW };
    const applied = (serial: number) => () => state?.desired?.serial === serial && state.desired.status === 'applied';
    await until(applied(await deploy(fleet, [v1])), 'version 1 applied');
    const requests = [0, 1, 2, 3].map((s) => ({ body: body(s), headers: { 'content-type': 'application/json' } }));
    const measure = (concurrency: number): Promise<WindowResult> =>
      runLoad({ port: agent.port, path: '/v2/models/mlp/infer', requests, concurrency, warmupMs: 500, windowMs }).then((r) => r.total);

    const rows: Cell[][] = [];
    for (const clients of CLIENTS) {
      const off: WindowResult[] = [];
      const on: WindowResult[] = [];
      let runs = 0;
      let skipped = 0;
      for (let round = 0; round < rounds; round++) {
        const plain = await deploy(fleet, [v1]);
        await until(() => applied(plain)() && !state?.models.some((m) => m.version === 2), 'shadow ended');
        off.push(await measure(clients));
        await deploy(fleet, [v1, v2]);
        await until(() => state?.models.some((m) => m.version === 2 && m.state === 'shadowing') === true, 'version 2 shadowing');
        on.push(await measure(clients));
        // Points come every second and count from the start of this evaluation (warm-up included).
        await new Promise((r) => setTimeout(r, 1100));
        runs += fleet.shadowPoint().samples;
        skipped += fleet.shadowPoint().skipped;
      }
      const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
      const ratio = (k: 'p50' | 'p99'): number => med(on.map((w, i) => w[k] / (off[i]?.[k] ?? NaN)));
      rows.push([clients, 'off', fmt(med(off.map((w) => w.rps)), 0), fmt(med(off.map((w) => w.p50)), 3), fmt(med(off.map((w) => w.p99)), 3), '', '', '-']);
      rows.push([
        clients, 'shadow 1.0', fmt(med(on.map((w) => w.rps)), 0), fmt(med(on.map((w) => w.p50)), 3), fmt(med(on.map((w) => w.p99)), 3),
        `${fmt(ratio('p50'))}x`, `${fmt(ratio('p99'))}x`, `${fmt((100 * runs) / Math.max(1, runs + skipped), 0)}% (${runs} of ${runs + skipped})`,
      ]);
    }
    printTable(
      `Shadow evaluation: served latency (ms) with a candidate at sampleRate 1.0 vs without (MLP 784-128-10, v2 JSON, ${rounds} round(s) of ${windowMs / 1000} s, medians)`,
      ['clients', 'mode', 'req/s', 'p50', 'p99', 'p50 ratio', 'p99 ratio', 'sampled requests the candidate ran'],
      rows,
      (i) => i !== 1,
    );
  } finally {
    await agent.stop();
    await client.endAsync(true);
    await broker.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await runShadowBench();
