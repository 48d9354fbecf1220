/**
 * A staged rollout at fleet scale (issue 14 item 9): N simulated devices
 * (bench/fleet-sim.ts with `answerDesired`: each subscribes to its own and
 * its group's desired topics, applies what counts, reports it, and sends
 * inference telemetry for what it serves) on a real Mosquitto, a real
 * collector in this process (Collector, SQLite store) and a
 * RolloutController with a fresh rollout key, ticking every second. The
 * group starts on version 1 (a group document, serial 1); the rollout moves
 * it to version 2 through waves 1,10%,50%,100% with no soak, small
 * minRequests and the default gates, as `edgefleet rollout start` would
 * record it (newRollout + store.rollouts.save).
 *
 * Reported: controller time per tick (p50/p99/max; a tick reads the group's
 * reported state and the wave's intervals, signs and publishes documents),
 * documents published (device documents, the group document, removals),
 * rollout start to done, done to every device back on the group document,
 * and per wave the time from its documents to all applied and from applied
 * to its gates passing (one telemetry interval: fresh data on the new
 * version).
 *
 * Settings (environment):
 *   ROLLOUT_SCALE_DEVICES=1000        simulated devices in the group
 *   ROLLOUT_SCALE_INTERVAL_MS=10000   one telemetry batch per device per interval (the agent's default)
 *   ROLLOUT_SCALE_CONNECTIONS=8       MQTT connections the simulated devices share
 * Run alone: npm run bench -- --only rollout-scale
 * test/rollout-scale.test.ts runs the same harness with 20 devices.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { Collector } from '../fleet/collector/collector.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { RolloutController } from '../fleet/rollout/controller.js';
import type { Rollout, RolloutSpec } from '../fleet/rollout/planner.js';
import { newRollout, parseWaves } from '../fleet/rollout/planner.js';
import { generateKeyPair, topics } from '../protocol/index.js';
import { buildManifest, signDesired, signManifest } from '../test/helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto } from '../test/helpers/mosquitto.js';
import type { Mosquitto } from '../test/helpers/mosquitto.js';
import { FleetSim } from './fleet-sim.js';
import { fmt, printTable } from './table.js';

const ROOT = 'edgefleet';
const GROUP = 'rollout';
const MODEL = 'scale';

export interface RolloutScaleOptions {
  devices: number;
  connections?: number;
  /** Telemetry interval of each simulated device (ms). */
  intervalMs?: number;
  /** Controller tick (ms). */
  tickMs?: number;
  waves?: string;
  minRequests?: number;
  /** Longest the rollout may take before the run gives up (ms). */
  timeoutMs?: number;
  log?: Logger;
  /** Told each step of the run as it happens (the benchmark prints them, so a long run shows where it is). */
  progress?: (line: string) => void;
}

export interface WaveFigures {
  devices: number;
  /** Documents published to every device of the wave reporting them applied (controller's clock). */
  toAppliedMs: number | null;
  /** Applied to the gates passing. */
  toPassedMs: number | null;
}

export interface TickFigures {
  ms: number;
  /** Documents (and removals) the tick published. */
  documents: number;
}

export interface RolloutScaleResult {
  rollout: Rollout;
  devices: number;
  waves: WaveFigures[];
  ticks: TickFigures[];
  published: number;
  /** Telemetry batches the simulator published and the collector had not stored at the end: nonzero means it fell behind. */
  backlog: number;
  startToDoneMs: number | null;
  /** Done to every simulated device serving the new version from the group document (null: not within the wait). */
  doneToGroupMs: number | null;
  /** Simulated devices serving version 2 from the group document, at the end. */
  onGroupDocument: number;
  /** Devices the collector shows on the group document with version 2, at the end. */
  storedOnGroupDocument: number;
  rejected: number;
  batches: number;
  simLagMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`rollout-scale: timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** `p`, or an error naming `what` once `ms` have passed: a setup that hangs fails the run instead. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`rollout-scale: ${what} took more than ${ms / 1000} s`)), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

export async function runRolloutScale(options: RolloutScaleOptions): Promise<RolloutScaleResult> {
  const n = options.devices;
  const intervalMs = options.intervalMs ?? 10_000;
  const log = options.log ?? pino({ level: 'silent' });
  const quiet = pino({ level: 'silent' });
  const t0 = Date.now();
  const progress = (line: string): void => options.progress?.(`  [${((Date.now() - t0) / 1000).toFixed(1)} s] ${line}`);
  const broker: Mosquitto = await startMosquitto();
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-rollout-scale-'));
  const store = new SqliteStore(join(dir, 'fleet.db'));
  const stops: (() => Promise<void>)[] = [async () => broker.stop(), async () => rm(dir, { recursive: true, force: true })];
  const stopAll = async (): Promise<void> => {
    for (const stop of stops.splice(0).reverse()) await stop().catch(() => undefined);
  };
  try {
    await store.init();
    stops.push(() => store.close());
    const collector = new Collector({
      broker: { url: broker.url, topicRoot: ROOT, tls: {} }, store, clientId: 'rollout-scale-collector', shareGroup: 'rollout-scale',
      sessionExpiryS: 0, retentionMs: null, connections: 2, log: quiet,
    });
    await collector.start();
    stops.push(() => collector.stop());

    // The group serves version 1 before the rollout: its document, as `edgefleet deploy` publishes it.
    const keys = { models: generateKeyPair(), rollout: generateKeyPair() };
    const manifest = (version: number) => signManifest(buildManifest(MODEL, version, randomBytes(4096)), [keys.models]);
    const fleet = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: 'rollout-scale-deploy' });
    const v1 = signDesired({ target: { group: GROUP }, serial: 1, models: [{ name: MODEL, version: 1, labels: ['stable'], manifest: manifest(1) }] }, [keys.rollout]);
    await fleet.publishAsync(topics.groupDesired(ROOT, GROUP), JSON.stringify(v1), { qos: 1, retain: true });
    await fleet.endAsync();

    const sim = new FleetSim({
      url: broker.url, root: ROOT, devices: n, connections: Math.min(n, options.connections ?? 8), prefix: `roll${randomBytes(2).toString('hex')}`,
      intervalMs, groups: [GROUP], answerDesired: true, healthEvery: 3,
    });
    stops.push(() => sim.stop());
    await within(sim.connect(), 60_000 + n * 20, `connecting ${n} simulated devices`);
    sim.run();
    progress(`${n} simulated devices connected`);
    // Every device stored on version 1, with two intervals of telemetry on it (the p99 gate's "before").
    await until(async () => {
      const rows = await store.fleetStatus({ group: GROUP });
      return rows.length === n && rows.every((r) => r.desired?.serial === 1 && r.models.some((m) => m.version === 1) && r.inference.length > 0);
    }, 60_000 + n * 20, 'every device stored on version 1');
    progress('every device stored on version 1');
    await sleep(Math.min(2 * intervalMs, 10_000));

    const spec: RolloutSpec = {
      group: GROUP, models: [{ name: MODEL, version: 2, labels: ['stable'], manifest: manifest(2) }], waves: parseWaves(options.waves ?? '1,10%,50%,100%'),
      canary: [], minApplied: 1, applyTimeoutMs: 120_000, soakMs: 0, maxErrorRate: 0.01, maxP99Increase: 0.25, p99SlackMs: 1,
      minRequests: options.minRequests ?? 10, shadow: null, onFailure: 'rollback', documentTtlMs: 3_600_000,
    };
    const devices = (await store.fleetStatus({ group: GROUP })).map((r) => r.device);
    const created = newRollout('scale-v2', spec, devices, Date.now());
    await store.rollouts.save(created, null);
    const tickMs = options.tickMs ?? 1000;
    const controller = new RolloutController({ store, broker: { url: broker.url, topicRoot: ROOT, tls: {} }, keys: [keys.rollout], log, holder: 'rollout-scale-collector', tickMs });
    // The controller's own loop (start()), unrolled to see how many documents each tick published.
    const ticks: TickFigures[] = [];
    let ticking = true;
    const loop = (async () => {
      while (ticking) {
        const before = controller.published;
        const t0 = performance.now();
        await controller.tick().catch((err: unknown) => log.warn({ err: String(err) }, 'rollout controller tick failed'));
        ticks.push({ ms: performance.now() - t0, documents: controller.published - before });
        await sleep(tickMs);
      }
    })();
    stops.push(async () => {
      ticking = false;
      await loop;
      await controller.stop();
    });

    // The controller's clock for each phase of each wave, as the record shows it while it passes.
    const seen = new Map<string, number>();
    let r = created;
    await until(async () => {
      r = (await store.rollouts.load(created.id)) ?? r;
      const key = `${r.wave}:${r.phase}`;
      if (!seen.has(key)) {
        seen.set(key, r.phaseSince);
        progress(`rollout ${r.status}, wave ${r.wave + 1}, ${r.phase}`);
      }
      return r.status !== 'running';
    }, options.timeoutMs ?? 600_000, `rollout ${created.id} to finish`);
    const doneAt = Date.now();
    progress(`rollout ${r.status}`);
    const newOnGroup = (): number =>
      sim.devices.filter((d) => d.desired?.desired?.source === 'group' && d.desired.desired.serial >= 2 && d.desired.served.map((m) => m.version).join() === '2').length;
    let doneToGroupMs: number | null = null;
    if (r.status === 'succeeded') {
      await until(() => newOnGroup() === n, 30_000, 'every device on the group document').then(() => (doneToGroupMs = Date.now() - doneAt), () => undefined);
    }
    const stored = async (): Promise<number> =>
      (await store.fleetStatus({ group: GROUP })).filter((row) => row.desired?.source === 'group' && row.models.every((m) => m.version === 2) && row.models.length === 1).length;
    await until(async () => (await stored()) === n, 15_000, 'the collector to store every final state').catch(() => undefined);
    progress('stopping');

    const waves = r.waves.map((w, i): WaveFigures => {
      const passedAt = seen.get(`${i + 1}:publish`) ?? seen.get(`${i + 1}:finalize`) ?? r.waves[i + 1]?.startedAt ?? null;
      return {
        devices: w.devices.length,
        toAppliedMs: w.appliedAt !== null && w.startedAt !== null ? w.appliedAt - w.startedAt : null,
        toPassedMs: passedAt !== null && w.appliedAt !== null && w.outcome === 'passed' ? passedAt - w.appliedAt : null,
      };
    });
    return {
      rollout: r, devices: n, waves, ticks: [...ticks], published: controller.published, backlog: sim.stats.batchesPublished - collector.stats.batches,
      startToDoneMs: r.status === 'succeeded' ? r.phaseSince - r.createdAt : null, doneToGroupMs,
      onGroupDocument: newOnGroup(), storedOnGroupDocument: await stored(), rejected: sim.stats.rejected,
      batches: collector.stats.batches, simLagMs: sim.stats.maxLagMs,
    };
  } finally {
    await stopAll();
  }
}

function percentile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : (sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number);
}

const seconds = (ms: number | null): string => (ms === null ? '-' : fmt(ms / 1000, 1));

export async function runRolloutScaleBench(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const skip = mosquittoSkipReason();
  if (skip !== false) {
    console.log(`\nrollout-scale: skipped (${skip})`);
    return;
  }
  const devices = Number(env.ROLLOUT_SCALE_DEVICES ?? 1000);
  const intervalMs = Number(env.ROLLOUT_SCALE_INTERVAL_MS ?? 10_000);
  const connections = Number(env.ROLLOUT_SCALE_CONNECTIONS ?? 8);
  for (const [name, v] of [['ROLLOUT_SCALE_DEVICES', devices], ['ROLLOUT_SCALE_INTERVAL_MS', intervalMs], ['ROLLOUT_SCALE_CONNECTIONS', connections]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${env[name]}`);
  }
  const res = await runRolloutScale({ devices, intervalMs, connections, log: pino({ level: 'warn' }), progress: (line) => console.log(line) });
  const r = res.rollout;
  const ms = res.ticks.map((t) => t.ms);
  const quiet = res.ticks.filter((t) => t.documents === 0).map((t) => t.ms);
  const busiest = res.ticks.reduce((a, t) => (t.documents > a.documents ? t : a), { ms: 0, documents: 0 });
  printTable(
    `Staged rollout to ${devices} simulated devices (waves 1,10%,50%,100%; soak 0; tick 1 s; telemetry every ${intervalMs / 1000} s; SQLite collector in process)`,
    ['devices', 'waves', 'status', 'ticks', 'tick p50 ms', 'tick p99 ms', 'tick max ms', 'max, no publish ms', 'biggest publish', 'documents', 'start->done s', 'done->all on group s', 'rejected'],
    [[
      devices, r.waves.length, r.status, ms.length, fmt(percentile(ms, 0.5), 1), fmt(percentile(ms, 0.99), 1), fmt(Math.max(...ms), 1), fmt(Math.max(...quiet), 1),
      `${busiest.documents} in ${fmt(busiest.ms / 1000, 1)} s`, res.published, seconds(res.startToDoneMs), seconds(res.doneToGroupMs), res.rejected,
    ]],
  );
  printTable(
    'Per wave (controller clock: documents published -> every device of the wave reports applied -> gates pass)',
    ['wave', 'devices', 'to applied s', 'applied -> passed s', 'outcome'],
    r.waves.map((w, i) => [i + 1, w.devices.length, seconds(res.waves[i]?.toAppliedMs ?? null), seconds(res.waves[i]?.toPassedMs ?? null), w.outcome]),
  );
  console.log(
    `collector stored ${res.batches} telemetry batches (${res.backlog} not yet at the end); simulator's worst publishing lag ${fmt(res.simLagMs, 0)} ms; ` +
      `${res.onGroupDocument}/${devices} devices on the group document with version 2 (${res.storedOnGroupDocument} in the store)`,
  );
  if (r.status !== 'succeeded') throw new Error(`rollout ${r.status}: ${r.reason ?? ''}`);
}
