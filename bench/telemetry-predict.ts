/**
 * Part 3 of the telemetry benchmark: predict throughput with inference
 * recording on and off. The agent's config has no switch for recording alone
 * (telemetry exists exactly when `mqtt` is set, and then MQTT also brings the
 * connection, reporter, rollout, uploader and health sampler), so:
 *
 * - "recording on" / "recording off": ONE agent process with `mqtt`
 *   configured (bench/telemetry-agent-child.ts), recording switched at run
 *   time by signal (SIGUSR2 on, SIGHUP off). The only difference between the
 *   two is InferenceRecorder.record() running per request, and what follows
 *   from it: a point per interval cut into the outbox (SQLite, fsync) and
 *   uploaded. Connection, reporter, rollout, uploader and health sampler run
 *   in both. This is the target's pair.
 * - "no MQTT": a second agent process from the same config without `mqtt`
 *   and `trust` (so no database, recorder, outbox, uploader, health sampler,
 *   MQTT connection, reporter or rollout), for the whole cost of turning
 *   telemetry on through the config, reported for information.
 *
 * Both agents run the MNIST MLP (models/onnx/zoo.ts mlpModel) with the same
 * runtime settings, pinned to the same CPU (when pinning is on), driven by
 * the closed-loop load generator (bench/load.ts) at 16 clients with OIP v2
 * binary requests (the cheapest request, so a fixed per-request cost of
 * recording shows the most). telemetry.intervalS is 1 s (the minimum,
 * default 10) so the cut, the SQLite append and the upload happen in every
 * window.
 *
 * The machine is shared and noisy, so on and off are measured as close
 * together as possible: each round drives the mqtt agent in ONE run of the
 * load generator (same connections) cut into short windows, recording
 * switched at the window boundaries in ABBA order (on off off on ..., next
 * round off on on off ...: a linear drift cancels within each quad of 4
 * windows, 1.2 s); the target's ratio is the median over all quads of
 * sum(on req/s) ÷ sum(off req/s) (a quad with a window of 0 answers, the
 * agent starved of CPU by other jobs, is left out and counted). The no-MQTT
 * agent gets one window of half the block's length per round, before or
 * after it (alternating); its ratios are medians over rounds. Both agents
 * get an untimed warm-up first. runPredict's `control` option runs an A/A
 * control (the "on" windows signalled off too) to see the noise floor.
 * Also reported, as noise-robust views of the same question: the agent's
 * CPU time per request on vs off (over all windows), record() alone in a
 * tight loop, and the time the mqtt agent spent in the outbox's synchronous
 * SQLite calls on its event loop (timed in the child, observing only).
 *
 * A plain mqtt.js subscriber sums the `count` of the inference points the
 * agent uploads: it must equal the record() calls the child made while on.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { InferenceRecorder } from '../agent/telemetry/recorder.js';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { parseTelemetryBatch, topics } from '../protocol/index.js';
import { makeFleetKeys, writeTrust } from '../test/helpers/fleet.js';
import type { Mosquitto } from '../test/helpers/mosquitto.js';
import { hasTaskset, startChild, type ServerChild } from './child.js';
import { cpuBetween, sampleCpu, waitForQuiet, type CpuSample } from './cpu.js';
import { mnistSamples } from './data.js';
import { post, runLoad, type LoadRequest } from './load.js';
import type { BenchSettings } from './settings.js';
import { fmt, printTable, type Cell } from './table.js';
import { affinity, iqr, medianOf, pairedRatio, range, setAffinity, silent, sleep } from './telemetry-common.js';

const CLIENTS = 16;
const DEVICE = 'bench-telemetry';
const TARGET_RATIO = 0.95;
const NOISY_PCT = 25;

interface Timing {
  /** Untimed load on each agent before the first round. */
  warmupMs: number;
  /** Warm-up of each load run (new connections). */
  rewarmMs: number;
  windowMs: number;
  /** Windows per round on the mqtt agent (a multiple of 4: ABBA). */
  windows: number;
  rounds: number;
  quietWaitMs: number;
}

type Mode = 'on' | 'off' | 'none';
const LABEL: Record<Mode, string> = {
  on: 'agent with mqtt, recording on',
  off: 'agent with mqtt, recording off',
  none: 'agent without mqtt (no telemetry at all)',
};

interface Sample {
  rps: number;
  p50: number;
  p99: number;
  ok: number;
  errors: number;
  elapsedS: number;
  /** Agent CPU seconds (all threads) in the window. */
  srvCpuS: number;
  srvCpuPct: number;
  genCpuPct: number;
  otherCpuPct: number;
}

function v2BinaryRequest(data: Float32Array): LoadRequest {
  const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', parameters: { binary_data_size: data.byteLength } }], parameters: { binary_data_output: true } }));
  const body = Buffer.concat([header, Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
  return { body, headers: { 'Content-Type': 'application/octet-stream', 'Inference-Header-Content-Length': header.length, 'Content-Length': body.length } };
}

interface ChildState {
  on: boolean;
  recorded: number;
  line: number;
  outboxMs: number;
  outboxCalls: number;
  outboxMaxMs: number;
}

/** The last `RECORDING on|off N #k outbox ms calls max` line the child wrote. */
function recordingState(child: ServerChild): ChildState | undefined {
  const all = [...child.stderrTail().matchAll(/RECORDING (on|off) (\d+) #(\d+) outbox ([\d.]+) (\d+) ([\d.]+)/g)];
  const m = all[all.length - 1];
  return m ? { on: m[1] === 'on', recorded: Number(m[2]), line: Number(m[3]), outboxMs: Number(m[4]), outboxCalls: Number(m[5]), outboxMaxMs: Number(m[6]) } : undefined;
}

const signalFor = (on: boolean): NodeJS.Signals => (on ? 'SIGUSR2' : 'SIGHUP');

/** Sets recording and waits for the child to confirm it with a new line. */
async function setRecording(child: ServerChild, on: boolean): Promise<ChildState> {
  const before = recordingState(child)?.line ?? 0;
  process.kill(child.pid, signalFor(on));
  const until = performance.now() + 5000;
  for (;;) {
    await sleep(5);
    const s = recordingState(child);
    if (s && s.line > before && s.on === on) return s;
    if (performance.now() > until) throw new Error(`recording child did not switch ${on ? 'on' : 'off'}:\n${child.stderrTail()}`);
  }
}

/**
 * One run of the load generator cut into `windows` windows; when `states`
 * is given, the recording state of window k+1 is signalled to the agent at
 * the boundary that ends window k (signals are absolute; the caller sets
 * the first window's state before).
 */
async function measureWindows(server: ServerChild, requests: readonly LoadRequest[], warmupMs: number, windowMs: number, windows: number, states: readonly boolean[] | undefined, errorSamples: Set<string>): Promise<Sample[]> {
  const cpu: CpuSample[] = [];
  const r = await runLoad({
    port: server.port, path: '/v2/models/mlp/infer', requests, concurrency: CLIENTS, warmupMs, windowMs, windows,
    onBoundary: (i) => {
      cpu[i] = sampleCpu(server.pid);
      const next = states?.[i];
      if (next !== undefined && i > 0 && next !== states?.[i - 1]) process.kill(server.pid, signalFor(next));
    },
  });
  for (const e of r.errorSamples) if (errorSamples.size < 5) errorSamples.add(e);
  return r.windows.map((w, i) => {
    const a = cpu[i] as CpuSample;
    const b = cpu[i + 1] as CpuSample;
    const split = cpuBetween(a, b);
    return { rps: w.rps, p50: w.p50, p99: w.p99, ok: w.ok, errors: w.errors, elapsedS: w.elapsedS, srvCpuS: b.server - a.server, srvCpuPct: split.server, genCpuPct: w.genCpuPct, otherCpuPct: split.other };
  });
}

/**
 * InferenceRecorder.record() in this process, ns per call (best of 5 runs of
 * 1M calls; one model version, latencies spread over the histogram), with a
 * cut() after each run as the interval timer does. The noise-free view of
 * the per-request cost, to set beside the agent's CPU per request.
 */
function recordNsPerCall(): number {
  const recorder = new InferenceRecorder({ sink: { append: () => undefined }, intervalS: 3600, logger: silent });
  let best = Infinity;
  for (let k = 0; k < 5; k++) {
    const n = 1_000_000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) recorder.record('mlp', 1, 'ok', 0.4 + (i % 97) * 0.05);
    best = Math.min(best, ((performance.now() - t0) * 1e6) / n);
    recorder.cut();
  }
  return best;
}

/** Sum of `count` over the inference points the agent uploaded. */
class CountCollector {
  counted = 0;
  points = 0;
  invalid = 0;
  private constructor(readonly client: MqttClient) {}
  static async start(url: string, topic: string): Promise<CountCollector> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 5, clientId: `bench-telemetry-counter-${process.pid}`, clean: true, reconnectPeriod: 200 });
    const c = new CountCollector(client);
    client.on('message', (_t, payload) => {
      try {
        for (const p of parseTelemetryBatch(payload).points) {
          c.points++;
          if (p.kind === 'inference') c.counted += p.count;
        }
      } catch {
        c.invalid++;
      }
    });
    await client.subscribeAsync(topic, { qos: 1 });
    return c;
  }
}

/** ABBA ABBA: window k's recording state in round r (rounds alternate which comes first). */
function blockStates(windows: number, round: number): boolean[] {
  const abba = [true, false, false, true];
  return Array.from({ length: windows }, (_, k) => (abba[k % 4] as boolean) !== (round % 2 === 1));
}

export interface PredictOptions {
  /** Overrides the number of rounds. */
  rounds?: number;
  /**
   * A/A control: the "on" windows are signalled off too, so both sides are
   * identical and the on÷off spread is the measurement's own noise.
   */
  control?: boolean;
}

export async function runPredict(dir: string, broker: Mosquitto, settings: BenchSettings, options: PredictOptions = {}): Promise<Cell[][]> {
  const { quick, threads } = settings;
  const t: Timing = quick
    ? { warmupMs: 1000, rewarmMs: 200, windowMs: 300, windows: 4, rounds: 3, quietWaitMs: 300 }
    : { warmupMs: 1500, rewarmMs: 300, windowMs: 300, windows: 8, rounds: 12, quietWaitMs: 1000 };
  if (options.rounds !== undefined) t.rounds = options.rounds;
  const control = options.control === true;
  const canPin = settings.pin !== undefined && hasTaskset();
  const pin = canPin ? settings.pin : undefined;
  const predictDir = join(dir, 'predict');
  const modelsDir = join(predictDir, 'models');
  await mkdir(modelsDir, { recursive: true });
  await writeModelTree(modelsDir, 'mlp', 1, mlpModel());
  const trust = join(predictDir, 'trust.json');
  await writeTrust(trust, makeFleetKeys());
  const common = {
    deviceId: DEVICE,
    http: { port: 0 },
    models: { dir: modelsDir, settleMs: 0 },
    runtime: { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' },
    telemetry: { intervalS: 1 },
    log: { level: 'warn' },
  };
  const withMqtt = { ...common, stateDir: join(predictDir, 'state-mqtt'), trust, mqtt: { url: broker.url } };
  const without = { ...common, stateDir: join(predictDir, 'state-plain') };
  const noneMs = (t.windows / 2) * t.windowMs;

  console.log(`\n### 3. Predict throughput, recording on vs off: MNIST MLP, ${CLIENTS} clients, OIP v2 binary, closed loop`);
  console.log(`"on"/"off": one agent with mqtt (${broker.url}), recording switched by signal at window boundaries; everything else identical, MQTT stack running in both`);
  console.log('"no MQTT": a second agent, same config without mqtt/trust: no recorder, outbox, uploader, health sampler, connection, reporter, rollout, database');
  console.log(`both: intraOpNumThreads=${threads}, telemetry.intervalS=1 (the minimum; default 10), health schedule default (every 30 s, mqtt agent only)`);
  console.log(`${t.rounds} rounds; each: mqtt agent ${t.rewarmMs} ms warm-up + ${t.windows} x ${t.windowMs} ms windows, recording ABBA... (on off off on..., next round off on on off...), one load run (same connections);`);
  console.log(`no-MQTT agent ${t.rewarmMs} ms + ${noneMs} ms; the two blocks alternate order; untimed ${t.warmupMs} ms warm-up of each agent first`);
  console.log(pin ? `pinning: both agents on CPU ${pin.server}, load generator (this process) on CPU ${pin.client}; Mosquitto not pinned` : 'pinning: off');
  if (control) console.log('A/A CONTROL: the "on" windows run with recording off as well');

  const originalAffinity = pin ? affinity(process.pid) : undefined;
  if (pin && !setAffinity(process.pid, String(pin.client))) throw new Error('taskset could not pin the benchmark process');
  const children: ServerChild[] = [];
  let collector: CountCollector | undefined;
  const samples: Record<Mode, Sample[]> = { on: [], off: [], none: [] };
  /** Per round: sum(on) ÷ sum(off) req/s of the ABBA block, mean on and off req/s, and the no-MQTT window's req/s. */
  const roundRatio: number[] = [];
  const roundOn: number[] = [];
  const roundOff: number[] = [];
  const roundNone: number[] = [];
  /** Per ABBA quad (4 consecutive windows, 1.2 s): sum(on) ÷ sum(off) req/s; quads with a window of 0 answers are left out. */
  const quadRatio: number[] = [];
  let quadsStarved = 0;
  const errorSamples = new Set<string>();
  let first: ChildState | undefined;
  let last: ChildState | undefined;
  let measuredS = 0;
  let uploaded = { counted: 0, points: 0, invalid: 0, waitedMs: 0 };
  let stderrTail = '';
  try {
    collector = await CountCollector.start(broker.url, topics.device('edgefleet', DEVICE, 'telemetry'));
    const [recChild, plainChild] = await Promise.all([
      startChild('./telemetry-agent-child.ts', [JSON.stringify(withMqtt), 'on'], pin?.server),
      startChild('./telemetry-agent-child.ts', [JSON.stringify(without), 'off'], pin?.server),
    ]);
    children.push(recChild, plainChild);
    const mnist = await mnistSamples(quick ? 64 : 128);
    const requests = mnist.samples.map(v2BinaryRequest);
    for (const c of children) {
      const res = await post(undefined, '127.0.0.1', c.port, '/v2/models/mlp/infer', requests[0] as LoadRequest, 10_000, true);
      if (res.status !== 200) throw new Error(`agent answered HTTP ${res.status}: ${res.body.toString('utf8', 0, 300)}`);
    }
    // Untimed warm-up of both agents (JIT, ORT, connections), recording on for the mqtt agent.
    await setRecording(recChild, true);
    await measureWindows(recChild, requests, t.warmupMs, t.windowMs, 1, undefined, errorSamples);
    await measureWindows(plainChild, requests, t.warmupMs, t.windowMs, 1, undefined, errorSamples);
    const t0 = performance.now();
    for (let r = 0; r < t.rounds; r++) {
      await waitForQuiet(t.quietWaitMs);
      const states = blockStates(t.windows, r);
      // What is signalled: in the A/A control, "off" throughout.
      const sent = control ? states.map(() => false) : states;
      const pairBlock = async (): Promise<void> => {
        const s0 = await setRecording(recChild, sent[0] as boolean);
        first ??= s0;
        const w = await measureWindows(recChild, requests, t.rewarmMs, t.windowMs, t.windows, sent, errorSamples);
        // Every signal sent in the block must have been handled (one line each), ending in the last window's state.
        const end = sent[sent.length - 1] as boolean;
        const expected = s0.line + sent.filter((on, i) => i > 0 && on !== sent[i - 1]).length;
        const until = performance.now() + 5000;
        for (;;) {
          const now = recordingState(recChild);
          if (now && now.line >= expected) {
            if (now.line !== expected || now.on !== end) throw new Error(`recording child: line #${now.line} (${now.on ? 'on' : 'off'}) after a block that should end at #${expected} (${end ? 'on' : 'off'})`);
            break;
          }
          if (performance.now() > until) throw new Error(`recording child did not confirm the block's switches (last line #${now?.line}, expected #${expected})`);
          await sleep(5);
        }
        w.forEach((sample, i) => samples[states[i] ? 'on' : 'off'].push(sample));
        const sum = (on: boolean, from = 0, to = w.length): number => w.reduce((n, x, i) => n + (i >= from && i < to && states[i] === on ? x.rps : 0), 0);
        for (let q = 0; q + 4 <= w.length; q += 4) {
          if (w.slice(q, q + 4).some((x) => x.ok === 0)) quadsStarved++;
          else quadRatio.push(sum(true, q, q + 4) / sum(false, q, q + 4));
        }
        roundRatio.push(sum(true) / sum(false));
        roundOn.push(sum(true) / (t.windows / 2));
        roundOff.push(sum(false) / (t.windows / 2));
      };
      const noneBlock = async (): Promise<void> => {
        const [w] = await measureWindows(plainChild, requests, t.rewarmMs, noneMs, 1, undefined, errorSamples);
        if (w) samples.none.push(w);
        roundNone.push(w?.rps ?? NaN);
      };
      if (r % 2 === 0) {
        await pairBlock();
        await noneBlock();
      } else {
        await noneBlock();
        await pairBlock();
      }
    }
    measuredS = (performance.now() - t0) / 1000;
    last = await setRecording(recChild, false);
    // The last cut comes within intervalS, the upload after debounceMs.
    const w0 = performance.now();
    while (collector.counted < last.recorded && performance.now() - w0 < 8000) await sleep(50);
    uploaded = { counted: collector.counted, points: collector.points, invalid: collector.invalid, waitedMs: performance.now() - w0 };
    stderrTail = recChild.stderrTail();
  } finally {
    for (const c of children) await c.stop().catch(() => undefined);
    await collector?.client.endAsync().catch(() => undefined);
    if (pin && originalAffinity) setAffinity(process.pid, originalAffinity);
  }

  const rps = (m: Mode): number[] => samples[m].map((s) => s.rps);
  const med = (m: Mode, f: (s: Sample) => number): number => medianOf(samples[m].map(f));
  /** Agent CPU per answered request over all windows of a mode together (the 10 ms ticks average out). */
  const usPerReq = (m: Mode): number => (samples[m].reduce((n, s) => n + s.srvCpuS, 0) * 1e6) / samples[m].reduce((n, s) => n + s.ok, 0);
  const modes: Mode[] = ['on', 'off', 'none'];
  const ratioVsOff: Record<Mode, number> = { on: medianOf(quadRatio), off: 1, none: pairedRatio(roundNone, roundOff) };
  printTable(
    `Predict, MNIST MLP, ${CLIENTS} clients, v2 binary (req/s, latency, CPU%: median window; ratio vs off: on = median over ABBA quads of sum(on)÷sum(off), no MQTT = median over rounds)`,
    ['scenario', 'windows', 'req/s', 'req/s range', 'p50 ms', 'p99 ms', 'errors', 'ratio vs off', 'srv µs/req (all windows)', 'srv CPU%', 'gen CPU%', 'other CPU%'],
    modes.map((m) => [
      LABEL[m], samples[m].length, fmt(med(m, (s) => s.rps), 0), range(rps(m)), fmt(med(m, (s) => s.p50), 3), fmt(med(m, (s) => s.p99), 3), samples[m].reduce((n, s) => n + s.errors, 0),
      `${fmt(ratioVsOff[m], 3)}x`, fmt(usPerReq(m), 1), fmt(med(m, (s) => s.srvCpuPct), 0), fmt(med(m, (s) => s.genCpuPct), 0),
      `${fmt(med(m, (s) => s.otherCpuPct), 0)}${med(m, (s) => s.otherCpuPct) > NOISY_PCT ? ' !' : ''}`,
    ]),
  );
  console.log('srv = the agent process, all threads (µs/req: its CPU time over all windows of the row ÷ answers); gen = this process (load generator);');
  console.log(`other = every other process on this VM; CPU% in % of one core; "!" = above ${NOISY_PCT}%, a disturbed window.`);
  console.log(`per round: mean req/s of the ${t.windows / 2} "on" windows / the ${t.windows / 2} "off" windows / the no-MQTT window, and sum(on)÷sum(off):`);
  for (let r = 0; r < roundRatio.length; r++) {
    console.log(`  round ${r + 1}: ${fmt(roundOn[r], 0)} / ${fmt(roundOff[r], 0)} / ${fmt(roundNone[r], 0)}  on÷off ${fmt(roundRatio[r], 3)}`);
  }
  if (errorSamples.size > 0) console.log(`errors seen: ${[...errorSamples].join('; ')}`);
  const recordedTotal = last?.recorded ?? 0;
  const countOk = uploaded.counted === recordedTotal && uploaded.invalid === 0 && recordedTotal > 0;
  console.log(`recording check: record() ran ${recordedTotal} times while on; the subscriber got ${uploaded.points} points whose inference counts sum to ${uploaded.counted} (${uploaded.invalid} invalid batches; waited ${fmt(uploaded.waitedMs, 0)} ms after the last window) → ${countOk ? 'match' : 'MISMATCH'}`);
  const obMs = (last?.outboxMs ?? NaN) - (first?.outboxMs ?? NaN);
  const obCalls = (last?.outboxCalls ?? NaN) - (first?.outboxCalls ?? NaN);
  console.log(`outbox on the mqtt agent's event loop (append/lease/ack/reportDrops, synchronous SQLite) over the ${fmt(measuredS, 1)} s of rounds: ${obCalls} calls, ${fmt(obMs, 1)} ms = ${fmt((obMs / 1000 / measuredS) * 100, 2)}% of the time; longest call since start ${fmt(last?.outboxMaxMs, 1)} ms`);
  const ns = recordNsPerCall();
  const offUs = usPerReq('off');
  console.log(`record() alone, in this process: ${fmt(ns, 0)} ns/call (best of 5 x 1M calls) = ${fmt((ns / 1000 / offUs) * 100, 2)}% of the agent's ${fmt(offUs, 1)} µs CPU per request with recording off`);
  const warnings = stderrTail.split('\n').filter((l) => l.trim() && !l.startsWith('RECORDING'));
  if (warnings.length > 0) console.log(`mqtt agent stderr (last lines):\n${warnings.slice(-5).join('\n')}`);

  const ratio = medianOf(quadRatio);
  console.log(`on÷off over ${quadRatio.length} ABBA quads (1.2 s each): median ${fmt(ratio, 3)}, interquartile ${iqr(quadRatio)}, range ${range(quadRatio, 3)}${quadsStarved > 0 ? `; ${quadsStarved} quad(s) left out: a window with 0 answers (agent starved of CPU)` : ''}`);
  const cpuRatio = usPerReq('on') / offUs;
  return [
    [`(3) predict req/s, recording on ÷ off (same agent process, mqtt configured), mlp, ${CLIENTS} clients`, `${fmt(ratio, 3)}x (${ratio <= 1 ? `${fmt((1 - ratio) * 100, 1)}% lower` : `${fmt((ratio - 1) * 100, 1)}% higher`})`, `≥ ${TARGET_RATIO.toFixed(2)}x (≤ 5% lower)`, ratio >= TARGET_RATIO ? 'PASS' : 'FAIL'],
    ['    uploaded inference counts = record() calls while on', countOk ? `${uploaded.counted} = ${recordedTotal}` : `${uploaded.counted} ≠ ${recordedTotal}`, 'equal', countOk ? 'PASS' : 'FAIL'],
    [`    (info) on ÷ off spread over ${quadRatio.length} ABBA quads: interquartile ${iqr(quadRatio)}`, '', '', 'info'],
    ['    (info) agent CPU per request, on ÷ off (all windows)', `${fmt(cpuRatio, 3)}x`, '', 'info'],
    ['    (info) record() alone ÷ agent CPU per request', `${fmt((ns / 1000 / offUs) * 100, 2)}%`, '', 'info'],
    ['    (info) agent with mqtt, recording on ÷ agent without mqtt (separate processes)', `${fmt(pairedRatio(roundOn, roundNone), 3)}x`, '', 'info'],
    ['    (info) agent with mqtt, recording off ÷ agent without mqtt (separate processes)', `${fmt(pairedRatio(roundOff, roundNone), 3)}x`, '', 'info'],
  ];
}
