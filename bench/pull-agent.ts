/**
 * "Last block → serving" for the pull benchmark: a real in-process agent
 * (the same composition as test/helpers/agent.ts's startTestAgent, built here
 * so its logger can be captured) gets a signed desired document over MQTT,
 * pulls the artifact, and serves it. Three clocks:
 *
 * - in-process marks: every Reporter.setModel call is timestamped (the
 *   instance method is wrapped, observing only; it still does its work), so
 *   the phases are exact: progress 1 is the moment the last block is durable
 *   (fsynced and recorded), `verifying` follows the puller's whole-file hash,
 *   and so on up to `serving`;
 * - the agent's own log lines ("model version available" carries loadMs and
 *   warmupMs);
 * - outside views: the retained state on `{root}/devices/{id}/state` as a fleet
 *   client sees it (coalesced by the reporter: 100 ms for state changes,
 *   1 s for progress-only ones) and GET /v2/models/{name}/ready polled every
 *   `pollMs` once the last block is in (fetch is warmed up before the pull).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { parseConfig } from '../agent/config/load.js';
import { createAgent } from '../agent/main.js';
import type { ModelPatch } from '../agent/rollout/reporter.js';
import type { Envelope } from '../protocol/dsse.js';
import { parseReportedState } from '../protocol/reported.js';
import { topics } from '../protocol/names.js';
import { publishDesired, signDesired, type FleetKeys } from '../test/helpers/fleet.js';


export interface ServeRun {
  /** Desired document published → progress 1 (last block fsynced and recorded). */
  downloadMs: number;
  /** Progress 1 → reported `serving` (in-process marks). */
  lastBlockToServingMs: number;
  /** Progress 1 → first 200 from /v2/models/{name}/ready (polled every pollMs). */
  lastBlockToReadyMs: number;
  /** As a fleet client sees the retained state: first state with progress 1 → first with `serving`. */
  mqttProgress1ToServingMs: number;
  phases: {
    /** Progress 1 → `verifying`: the puller's whole-file sha256 over the staging file (+ close). */
    fileHashMs: number;
    /** `verifying` → second `verifying`: install (rename, fsync dir, manifest written atomically), re-plan, manifest signature re-checked. */
    installMs: number;
    /** → `loading`: model.onnx read back and hashed again (readVerified). */
    rehashMs: number;
    /** ONNX Runtime session creation (the loader's loadMs). */
    ortLoadMs: number;
    /** Warm-up runs (the loader's warmupMs). */
    warmupMs: number;
    /** The rest of `loading` → execution provider reported: the manifest self-test run and registry activation. */
    selfTestMs: number;
    /** Execution provider reported → `serving`: default switched. */
    switchMs: number;
  };
}

export interface ServeSetup {
  brokerUrl: string;
  root: string;
  trustFile: string;
  keys: FleetKeys;
  /** Connected fleet client, used to publish the desired document and watch state. */
  fleet: MqttClient;
  model: string;
  version: number;
  manifest: Envelope;
  threads: number;
  window: number;
  /** How often /v2/models/{name}/ready is polled once the last block is in; 0: not at all. */
  pollMs: number;
}

interface Mark {
  t: number;
  patch: ModelPatch;
}

interface LogLine {
  t: number;
  msg?: string;
  loadMs?: number;
  warmupMs?: number;
  level?: number;
}

export async function measureServe(setup: ServeSetup, deviceId: string): Promise<ServeRun> {
  const { root, model, version } = setup;
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-pull-agent-'));
  const logs: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      const t = performance.now();
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        try {
          logs.push({ t, ...(JSON.parse(line) as Omit<LogLine, 't'>) });
        } catch {
          /* not JSON: ignore */
        }
      }
      done();
    },
  });
  const config = parseConfig(
    {
      deviceId,
      stateDir: join(dir, 'state'),
      trust: setup.trustFile,
      mqtt: { url: setup.brokerUrl, topicRoot: root },
      http: { port: 0 },
      runtime: { executionProviders: ['cpu'], intraOpNumThreads: setup.threads },
      rollout: { window: setup.window, healthWindowS: 0 },
    },
    { source: 'pull bench agent' },
  );
  const agent = createAgent(config, pino({ level: 'info' }, sink));
  const stateTopic = topics.device(root, deviceId, 'state');
  const mqttStates: { t: number; state: string; progress: number }[] = [];
  const onState = (topic: string, payload: Buffer): void => {
    if (topic !== stateTopic || payload.length === 0) return;
    const t = performance.now();
    const m = parseReportedState(payload).models.find((x) => x.name === model && x.version === version);
    if (m) mqttStates.push({ t, state: m.state, progress: m.progress });
  };
  setup.fleet.on('message', onState);
  await setup.fleet.subscribeAsync(stateTopic, { qos: 1 });
  let readyAt: number | undefined;
  let poller: NodeJS.Timeout | undefined;
  try {
    await agent.start();
    const port = agent.httpAddress?.port;
    const reporter = agent.reporter;
    if (port === undefined || !reporter) throw new Error('agent did not start with HTTP and MQTT');
    const marks: Mark[] = [];
    const setModel = reporter.setModel.bind(reporter);
    let lastBlock: number | undefined;
    const poll = async (): Promise<void> => {
      if (readyAt !== undefined) return;
      const res = await fetch(`http://127.0.0.1:${port}/v2/models/${model}/ready`).catch(() => undefined);
      await res?.arrayBuffer();
      if (res?.status === 200 && readyAt === undefined) readyAt = performance.now();
      else poller = setTimeout(() => void poll(), setup.pollMs);
    };
    let servingResolve: () => void = () => undefined;
    let servingFail: (err: Error) => void = () => undefined;
    const serving = new Promise<void>((resolve, reject) => {
      servingResolve = resolve;
      servingFail = reject;
    });
    reporter.setModel = (name: string, v: number, patch: ModelPatch): void => {
      if (name === model && v === version) {
        const t = performance.now();
        marks.push({ t, patch });
        if (patch.progress === 1 && lastBlock === undefined) {
          lastBlock = t;
          if (setup.pollMs > 0) void poll();
        }
        if (patch.state === 'serving') servingResolve();
        if (patch.state === 'failed' || patch.state === 'rejected' || patch.state === 'rolled_back') servingFail(new Error(`model ${patch.state}: ${patch.error ?? ''}`));
      }
      setModel(name, v, patch);
    };

    // The first fetch() in a process loads undici (tens of ms on the event loop): not inside the measured span.
    await (await fetch(`http://127.0.0.1:${port}/v2/health/ready`)).arrayBuffer();
    const published = performance.now();
    await publishDesired(setup.fleet, root, { device: deviceId }, signDesired({ target: { device: deviceId }, serial: 1, models: [{ name: model, version, manifest: setup.manifest }] }, [setup.keys.rollout]));
    await withTimeout(serving, 60_000, 'the model to serve');
    const until = performance.now() + 10_000;
    while (((setup.pollMs > 0 && readyAt === undefined) || !mqttStates.some((s) => s.state === 'serving')) && performance.now() < until) await sleep(5);

    /** Index of the first mark at or after `from` that matches. */
    const at = (what: string, pred: (p: ModelPatch) => boolean, from = 0): number => {
      const i = marks.findIndex((x, j) => j >= from && pred(x.patch));
      if (i < 0) throw new Error(`no reporter mark for ${what}; marks: ${JSON.stringify(marks.map((m) => m.patch))}`);
      return i;
    };
    const iP1 = at('progress 1', (p) => p.progress === 1);
    const iVerifying1 = at('verifying (file hashed)', (p) => p.state === 'verifying', iP1);
    const iVerifying2 = at('verifying (before load)', (p) => p.state === 'verifying' && 'sha256' in p, iVerifying1 + 1);
    const iLoading = at('loading', (p) => p.state === 'loading', iVerifying2);
    const iProvider = at('execution provider', (p) => p.executionProvider !== undefined, iLoading);
    const iServed = at('serving', (p) => p.state === 'serving', iProvider);
    const time = (i: number): number => (marks[i] as Mark).t;
    const [p1, verifying1, verifying2, loading, provider, served] = [iP1, iVerifying1, iVerifying2, iLoading, iProvider, iServed].map(time) as [number, number, number, number, number, number];
    const available = logs.find((l) => l.msg === 'model version available');
    const failed = logs.filter((l) => (l.level ?? 0) >= 40).map((l) => l.msg);
    if (!available) throw new Error(`agent logged no "model version available"; warnings: ${failed.join('; ')}`);
    const ortLoadMs = available.loadMs ?? NaN;
    const warmupMs = available.warmupMs ?? NaN;
    const mqttP1 = mqttStates.find((s) => s.progress === 1)?.t ?? NaN;
    const mqttServing = mqttStates.find((s) => s.state === 'serving')?.t ?? NaN;
    return {
      downloadMs: p1 - published,
      lastBlockToServingMs: served - p1,
      lastBlockToReadyMs: (readyAt ?? NaN) - p1,
      mqttProgress1ToServingMs: mqttServing - mqttP1,
      phases: {
        fileHashMs: verifying1 - p1,
        installMs: verifying2 - verifying1,
        rehashMs: loading - verifying2,
        ortLoadMs,
        warmupMs,
        selfTestMs: provider - loading - ortLoadMs - warmupMs,
        switchMs: served - provider,
      },
    };
  } finally {
    clearTimeout(poller);
    setup.fleet.off('message', onState);
    await setup.fleet.unsubscribeAsync(stateTopic).catch(() => undefined);
    await agent.stop();
    // Retire the retained desired document and state so the broker keeps nothing of this run.
    await setup.fleet.publishAsync(topics.device(root, deviceId, 'desired'), Buffer.alloc(0), { qos: 1, retain: true }).catch(() => undefined);
    await setup.fleet.publishAsync(stateTopic, Buffer.alloc(0), { qos: 1, retain: true }).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms))),
  ]).finally(() => clearTimeout(timer));
}
