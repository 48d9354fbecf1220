/**
 * The collector at fleet scale (issue 13 item 5): bench/fleet-sim.ts drives N
 * simulated devices (one telemetry batch per device per 10 s, spread evenly,
 * over a few MQTT connections) through a real Mosquitto into one or two real
 * collectors, each in its own process (bench/fleet-collector-child.ts: store,
 * Collector, dashboard), on SQLite (synchronous=FULL) or PostgreSQL (fsync on).
 *
 * Per configuration, after one interval of warm-up (every device has sent)
 * and until the start-up backlog is worked off (at most 30 s more), over a
 * steady window:
 *   - offered and stored batches/s (the collectors' own count of committed batches);
 *   - delay publish -> acknowledged (section 12: the collector publishes the
 *     ack after committing, coalesced over 250 ms, so this bounds publish ->
 *     stored from above), p50 and p99; batches still unacknowledged at the
 *     end count with their age, so falling behind cannot hide;
 *   - collector CPU (% of one core, all collectors) and peak RSS, and the
 *     collector's event-loop delay (p99 of 500 ms windows, and max), which is
 *     what a slow dashboard query would stall;
 *   - `edgefleet status` (the compiled CLI, a fresh process) wall time, and
 *     beside it `edgefleet --help` at the same moment (the CLI's start alone);
 *   - /api/devices (the dashboard's first page, and sorted by p99) while ingesting;
 *   - the dashboard's fleet table in headless Chromium: page load to the first
 *     page of rows drawn, and to the next page after a click.
 *
 * Settings (environment):
 *   FLEET_SCALE_DEVICES=1000,10000   fleet sizes
 *   FLEET_SCALE_STORES=sqlite,postgres,postgres*2   store and collectors per configuration
 *   FLEET_SCALE_SECONDS=30           steady window (BENCH_QUICK: 10)
 *   FLEET_SCALE_CONNECTIONS=8        MQTT connections the simulated devices share
 *   FLEET_SCALE_COLLECTOR_CONNECTIONS=4  MQTT 5 sessions per collector (edgefleet collect --connections)
 *   FLEET_SCALE_INTERVAL_MS=10000    one batch per device per interval
 *   FLEET_SCALE_WARMUP_MAX_S=30      longest wait for the start-up backlog to clear
 * Run alone: npm run bench -- --only fleet-scale
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { mosquittoSkipReason, startMosquitto } from '../test/helpers/mosquitto.js';
import type { Mosquitto } from '../test/helpers/mosquitto.js';
import { compiledScript, startChild, type ServerChild } from './child.js';
import { FleetSim } from './fleet-sim.js';
import { postgresBin, startBenchPostgres, type BenchPostgres } from './postgres-server.js';
import { benchSettings } from './settings.js';
import { fmt, printTable, type Cell } from './table.js';
import { fsType, medianOf } from './telemetry-common.js';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update'];
/** Targets from issue 13. */
const TARGET_DELAY_P99_MS = 2000;
const TARGET_QUERY_MS = 1000;
/** A probe (API call, page render) that takes longer is recorded as a timeout, not waited for. */
const PROBE_TIMEOUT_MS = 30_000;

interface ScaleConfig {
  store: 'sqlite' | 'postgres';
  collectors: number;
  devices: number;
}

interface CollectorStatsLine {
  batches: number;
  points: number;
  duplicates: number;
  quarantined: number;
  overQuota: number;
  eldP99Ms: number;
  eldMaxMs: number;
}

interface ScaleResult {
  config: ScaleConfig;
  connectS: number;
  /** From the first batch until the steady window: one interval, then the start-up backlog. */
  warmupS: number;
  offered: number;
  stored: number;
  delayP50: number;
  delayP99: number;
  backlog: number;
  cpuPct: number;
  rssMiB: number;
  eldP99: number;
  eldMax: number;
  statusS: number;
  statusLines: number;
  /** `edgefleet --help` in a fresh process at the same moment: what status costs before it reads anything. */
  startupS: number;
  apiMs: number[];
  apiSortedMs: number;
  renderMs: number;
  nextPageMs: number;
  simLagMs: number;
  quarantined: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function parseConfigs(env: NodeJS.ProcessEnv): ScaleConfig[] {
  const devices = (env.FLEET_SCALE_DEVICES ?? '1000,10000').split(',').map((s) => Number(s.trim()));
  if (devices.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`FLEET_SCALE_DEVICES must be positive integers, got ${env.FLEET_SCALE_DEVICES}`);
  const stores = (env.FLEET_SCALE_STORES ?? 'sqlite,postgres,postgres*2').split(',').map((s) => s.trim());
  const out: ScaleConfig[] = [];
  for (const n of devices) {
    for (const s of stores) {
      const m = /^(sqlite|postgres)(?:\*([12]))?$/.exec(s);
      if (!m) throw new Error(`FLEET_SCALE_STORES: "${s}" is not sqlite, postgres or postgres*2`);
      out.push({ store: m[1] as ScaleConfig['store'], collectors: Number(m[2] ?? 1), devices: n });
    }
  }
  return out;
}

function percentile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

function lastStats(child: ServerChild): CollectorStatsLine | undefined {
  const lines = child.stderrTail().split('\n').filter((l) => l.startsWith('STATS {') && l.endsWith('}'));
  const last = lines[lines.length - 1];
  return last === undefined ? undefined : (JSON.parse(last.slice('STATS '.length)) as CollectorStatsLine);
}

/** Sum of the collectors' committed batches, from their latest STATS lines. */
function storedBatches(children: readonly ServerChild[]): number {
  return children.reduce((n, c) => n + (lastStats(c)?.batches ?? 0), 0);
}

/** `edgefleet ARGS` as an operator runs it (compiled, a fresh process): wall time and lines printed. */
function timeCli(args: string[]): Promise<{ s: number; lines: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [compiledScript('edgefleet-cli-child.ts'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let lines = 0;
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      for (const b of c) if (b === 10) lines++;
    });
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve({ s: (performance.now() - t0) / 1000, lines }) : reject(new Error(`edgefleet ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

/** Time to a whole /api/devices answer; Infinity when none came within PROBE_TIMEOUT_MS (printed as a timeout). */
async function timeApi(url: string): Promise<number> {
  const t0 = performance.now();
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    const body = (await res.json()) as { total?: number };
    if (!res.ok || typeof body.total !== 'number') throw new Error(`${url}: ${res.status}`);
  } catch (err) {
    if ((err as Error).name === 'TimeoutError') return Infinity;
    throw err;
  }
  return performance.now() - t0;
}

const ms = (v: number): string => (v === Infinity ? `>${PROBE_TIMEOUT_MS / 1000} s` : fmt(v, 0));

/** Load to the first page of rows drawn; then a click on "next" to its rows. Infinity for a step that timed out. */
async function timeRender(browser: Browser, url: string): Promise<{ loadMs: number; nextMs: number }> {
  const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
  let loadMs = Infinity;
  try {
    const page = await context.newPage();
    const t0 = performance.now();
    await page.goto(url, { timeout: PROBE_TIMEOUT_MS });
    // The devices the store has so far: a collector behind has not stored every state yet.
    await page.locator('#range').filter({ hasText: /^1-\d+ of \d+$/ }).waitFor({ timeout: PROBE_TIMEOUT_MS });
    loadMs = performance.now() - t0;
    const t1 = performance.now();
    await page.click('#next');
    await page.locator('#range').filter({ hasText: /^101-\d+ of \d+$/ }).waitFor({ timeout: PROBE_TIMEOUT_MS });
    return { loadMs, nextMs: performance.now() - t1 };
  } catch (err) {
    if ((err as Error).name === 'TimeoutError') return { loadMs, nextMs: Infinity };
    throw err;
  } finally {
    await context.close();
  }
}

async function runConfig(c: ScaleConfig, index: number, env: { dir: string; pg: BenchPostgres | undefined; browser: Browser | undefined; windowS: number; connections: number; intervalMs: number; warmupMaxMs: number }): Promise<ScaleResult> {
  const broker: Mosquitto = await startMosquitto();
  const db = c.store === 'sqlite' ? `sqlite:${join(env.dir, `fleet-${index}.db`)}` : await (env.pg as BenchPostgres).database(`fleet_scale_${process.pid}_${index}`);
  const children: ServerChild[] = [];
  const sim = new FleetSim({ url: broker.url, devices: c.devices, connections: env.connections, prefix: `s${index}`, intervalMs: env.intervalMs, acks: true });
  try {
    for (let k = 0; k < c.collectors; k++) {
      const config = {
        broker: broker.url,
        db,
        clientId: `bench-collector-${index}-${k}`,
        shareGroup: `bench-${index}`,
        connections: Number(process.env.FLEET_SCALE_COLLECTOR_CONNECTIONS ?? 4),
      };
      children.push(await startChild('fleet-collector-child.ts', [JSON.stringify(config)], undefined, 60_000));
    }
    const t0 = performance.now();
    await sim.connect();
    const connectS = (performance.now() - t0) / 1000;
    const warmStart = performance.now();
    sim.run();
    // Warm-up: one interval, so every device has sent and the rate is the steady one; then until
    // the start-up backlog (every device's retained status and state, to every collector) is
    // worked off: at most 2 s of batches unacknowledged, or WARMUP_MAX_MS more.
    await sleep(env.intervalMs + 1000);
    const rate = c.devices / (env.intervalMs / 1000);
    const warmUntil = performance.now() + env.warmupMaxMs;
    while (sim.unacked > rate * 2 && performance.now() < warmUntil) await sleep(250);
    sim.takeDelays();
    const warmupS = (performance.now() - warmStart) / 1000;
    const start = { at: performance.now(), stored: storedBatches(children), published: sim.stats.batchesPublished, cpu: children.map((ch) => ch.cpuSeconds()) };
    const dashboard = `http://127.0.0.1:${(children[0] as ServerChild).port}`;
    let rss = 0;
    let eldP99 = 0;
    let eldMax = 0;
    const apiMs: number[] = [];
    let apiSortedMs = NaN;
    let status = { s: NaN, lines: 0 };
    let startupS = NaN;
    let render = { loadMs: NaN, nextMs: NaN };
    const windowMs = env.windowS * 1000;
    const inWindow = (): boolean => performance.now() - start.at < windowMs;
    // Sampling and probing run side by side: a slow probe must not stop the sampling, nor shorten the others.
    const sampling = (async () => {
      while (inWindow()) {
        await sleep(500);
        for (const ch of children) {
          rss = Math.max(rss, rssBytes(ch.pid));
          const s = lastStats(ch);
          if (s) {
            eldP99 = Math.max(eldP99, s.eldP99Ms);
            eldMax = Math.max(eldMax, s.eldMaxMs);
          }
        }
      }
    })();
    const probing = (async () => {
      const at = async (fraction: number): Promise<void> => {
        const wait = start.at + windowMs * fraction - performance.now();
        if (wait > 0) await sleep(wait);
      };
      await at(0.1);
      apiMs.push(await timeApi(`${dashboard}/api/devices`));
      apiSortedMs = await timeApi(`${dashboard}/api/devices?sort=p99&desc=true`);
      await at(0.3);
      startupS = (await timeCli(['--help'])).s;
      status = await timeCli(['status', '--db', db]);
      await at(0.5);
      if (env.browser) render = await timeRender(env.browser, dashboard);
      while (inWindow()) {
        apiMs.push(await timeApi(`${dashboard}/api/devices`));
        await sleep(2000);
      }
    })();
    await Promise.all([sampling, probing]);
    const elapsedS = (performance.now() - start.at) / 1000;
    const stored = (storedBatches(children) - start.stored) / elapsedS;
    const offered = (sim.stats.batchesPublished - start.published) / elapsedS;
    const cpu = children.reduce((n, ch, k) => n + (ch.cpuSeconds() - (start.cpu[k] ?? 0)), 0);
    const now = performance.now();
    // Batches still waiting count with their age: a collector falling behind shows in p99.
    const pendingAges = sim.devices.flatMap((d) => d.pending.filter((p) => p.at >= start.at).map((p) => now - p.at));
    const delays = [...sim.takeDelays(), ...pendingAges];
    const quarantined = children.reduce((n, ch) => n + (lastStats(ch)?.quarantined ?? 0), 0);
    return {
      config: c,
      connectS,
      warmupS,
      offered,
      stored,
      delayP50: percentile(delays, 0.5),
      delayP99: percentile(delays, 0.99),
      backlog: sim.unacked,
      cpuPct: (cpu / elapsedS) * 100,
      rssMiB: rss / 2 ** 20,
      eldP99,
      eldMax,
      statusS: status.s,
      statusLines: status.lines,
      startupS,
      apiMs,
      apiSortedMs,
      renderMs: render.loadMs,
      nextPageMs: render.nextMs,
      simLagMs: sim.stats.maxLagMs,
      quarantined,
    };
  } finally {
    sim.halt();
    for (const ch of children) await ch.stop();
    await sim.stop().catch(() => undefined);
    await broker.stop();
  }
}

export async function runFleetScaleBench(): Promise<void> {
  const skip = mosquittoSkipReason();
  if (skip) throw new Error(skip);
  const settings = benchSettings();
  const configs = parseConfigs(process.env);
  const windowS = Number(process.env.FLEET_SCALE_SECONDS ?? (settings.quick ? 10 : 30));
  const connections = Number(process.env.FLEET_SCALE_CONNECTIONS ?? 8);
  const intervalMs = Number(process.env.FLEET_SCALE_INTERVAL_MS ?? 10_000);
  // Longest wait for the start-up backlog to clear before measuring anyway (a collector that never catches up).
  const warmupMaxMs = Number(process.env.FLEET_SCALE_WARMUP_MAX_S ?? 30) * 1000;
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'edgefleet-fleet-scale-'));
  const needPg = configs.some((c) => c.store === 'postgres');
  const bin = postgresBin();
  if (needPg && bin === undefined) throw new Error('PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin); set FLEET_SCALE_STORES=sqlite or install postgresql');
  const pg = needPg ? await startBenchPostgres(bin as string) : undefined;
  const browser = existsSync(CHROMIUM) ? await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true }) : undefined;
  console.log('\n## Collector at fleet scale: simulated devices -> Mosquitto -> collector process(es) -> store');
  console.log(`one batch per device per ${intervalMs / 1000} s (2 inference points + health, ~0.9 KB), ${connections} device connections; ` +
    `warm-up ${intervalMs / 1000 + 1} s + until the backlog clears (at most ${warmupMaxMs / 1000} s), steady window ${windowS} s; SQLite (synchronous=FULL) in ${dir} (${await fsType(dir)}); PostgreSQL fsync on` +
    `${browser ? '' : `; no Chromium at ${CHROMIUM}: render not measured`}`);
  const results: ScaleResult[] = [];
  try {
    for (const [i, c] of configs.entries()) {
      process.stdout.write(`  ${c.store} x${c.collectors}, ${c.devices} devices ... `);
      const r = await runConfig(c, i, { dir, pg, browser, windowS, connections, intervalMs, warmupMaxMs });
      console.log(`stored ${fmt(r.stored, 0)}/s of ${fmt(r.offered, 0)}/s, delay p99 ${fmt(r.delayP99, 0)} ms`);
      // The table and the fleet line at least: a status that printed less did not read the fleet.
      if (r.statusLines < c.devices + 2) console.log(`  warning: edgefleet status printed ${r.statusLines} lines for ${c.devices} devices`);
      results.push(r);
    }
  } finally {
    await browser?.close();
    await pg?.stop();
    await rm(dir, { recursive: true, force: true });
  }
  printTable(
    'Collector at fleet scale (delay: publish -> section 12 ack, which follows the commit; CPU: % of one core, all collectors; loop: collector event-loop delay p99/max ms)',
    ['store', 'coll.', 'devices', 'warm-up s', 'offered b/s', 'stored b/s', 'stored/offered', 'delay p50 ms', 'delay p99 ms', 'unacked at end', 'CPU %', 'RSS MiB', 'loop p99/max ms',
      'status s (CLI start)', '/api/devices ms', 'sorted p99 ms', 'render ms', 'next page ms', 'sim lag ms'],
    results.map((r): Cell[] => [
      r.config.store, r.config.collectors, r.config.devices, fmt(r.warmupS, 0), fmt(r.offered, 0), fmt(r.stored, 0), `${fmt(r.stored / r.offered)}x`,
      fmt(r.delayP50, 0), fmt(r.delayP99, 0), r.backlog, fmt(r.cpuPct, 0), fmt(r.rssMiB, 0), `${fmt(r.eldP99, 0)}/${fmt(r.eldMax, 0)}`,
      `${fmt(r.statusS)} (${fmt(r.startupS)})`, `${ms(medianOf(r.apiMs))} (max ${ms(Math.max(...r.apiMs))})`, ms(r.apiSortedMs), ms(r.renderMs), ms(r.nextPageMs), fmt(r.simLagMs, 0),
    ]),
    (i) => i > 0,
  );
  const bad = results.filter((r) => r.quarantined > 0);
  if (bad.length > 0) console.log(`warning: the collector quarantined simulator messages in ${bad.length} configuration(s): the simulator is not speaking the protocol`);
  const checks = results.filter((r) => r.config.devices >= 10_000);
  if (checks.length > 0) {
    printTable(
      `Targets at 10,000 devices (issue 13): keeps up (stored/offered >= 0.98, nothing piling up), delay p99 < ${TARGET_DELAY_P99_MS} ms, status and /api/devices < ${TARGET_QUERY_MS} ms`,
      ['store', 'coll.', 'keeps up', `delay p99 < ${TARGET_DELAY_P99_MS} ms`, 'status < 1 s', '/api/devices < 1 s'],
      checks.map((r) => [
        r.config.store, r.config.collectors,
        r.stored / r.offered >= 0.98 && r.backlog < r.offered * 3 ? 'yes' : 'NO',
        r.delayP99 < TARGET_DELAY_P99_MS ? 'yes' : 'NO',
        r.statusS < TARGET_QUERY_MS / 1000 ? 'yes' : 'NO',
        Math.max(...r.apiMs, r.apiSortedMs) < TARGET_QUERY_MS ? 'yes' : 'NO',
      ]),
      (i) => i === 1,
    );
  }
}
