/**
 * `npm run bench`: runs every benchmark module in order and prints its tables.
 *   BENCH_QUICK=1     ~1 minute smoke run (short windows)
 *   BENCH_PIN=0       do not pin servers and load generator to separate CPUs
 *   BENCH_THREADS=n   ONNX Runtime intraOpNumThreads everywhere (default 1)
 *   BENCH_HALTPOLL=0  grpc: skip the MLP latency rows with guest halt polling (idle.ts)
 *   --only a,b        run only the named modules
 * Adding a benchmark is one line in `benchmarks` below.
 */
import { readFileSync } from 'node:fs';
import { arch, availableParallelism, cpus, platform, release, totalmem } from 'node:os';
import { describeIdle } from './idle.js';
import { benchSettings } from './settings.js';
import { runServing } from './serving.js';

interface Benchmark {
  name: string;
  run(): Promise<void>;
}

const benchmarks: Benchmark[] = [
  { name: 'serving', run: () => runServing() },
  { name: 'grpc', run: () => import('./grpc.js').then((m) => m.runGrpcBench()) },
  { name: 'pull', run: () => import('./pull.js').then((m) => m.runPullBench()) },
  { name: 'telemetry', run: () => import('./telemetry.js').then((m) => m.runTelemetryBench()) },
  { name: 'shadow', run: () => import('./shadow.js').then((m) => m.runShadowBench()) },
  { name: 'fleet-scale', run: () => import('./fleet-scale.js').then((m) => m.runFleetScaleBench()) },
  { name: 'rollout-scale', run: () => import('./rollout-scale.js').then((m) => m.runRolloutScaleBench()) },
  { name: 'fleet-metrics', run: () => import('./fleet-metrics.js').then((m) => m.runFleetMetricsBench()) },
  { name: 'alerts', run: () => import('./alerts.js').then((m) => m.runAlertsBench()) },
];

function ortVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../node_modules/onnxruntime-node/package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function selected(argv: readonly string[]): Benchmark[] {
  const i = argv.findIndex((a) => a === '--only' || a.startsWith('--only='));
  if (i < 0) return benchmarks;
  const arg = argv[i] as string;
  const list = (arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : (argv[i + 1] ?? '')).split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = list.filter((n) => !benchmarks.some((b) => b.name === n));
  if (unknown.length > 0 || list.length === 0) {
    throw new Error(`--only: unknown benchmark(s) ${unknown.join(', ') || '(none given)'}; known: ${benchmarks.map((b) => b.name).join(', ')}`);
  }
  return benchmarks.filter((b) => list.includes(b.name));
}

const toRun = selected(process.argv.slice(2));
const settings = benchSettings();
const cpu = cpus()[0];
console.log('# edgefleet benchmarks');
console.log(`cpu: ${cpu?.model ?? 'unknown'} (${availableParallelism()} cores available, ${cpus().length} logical)`);
console.log(`memory: ${(totalmem() / 2 ** 30).toFixed(1)} GiB; os: ${platform()} ${release()} ${arch()}`);
console.log(`node ${process.version}; onnxruntime-node ${ortVersion()}`);
console.log(describeIdle());
console.log(`mode: ${settings.quick ? 'quick (BENCH_QUICK=1)' : 'full'}; intraOpNumThreads=${settings.threads}; benchmarks: ${toRun.map((b) => b.name).join(', ')}`);

const started = performance.now();
let failed = 0;
for (const b of toRun) {
  const t0 = performance.now();
  try {
    await b.run();
    console.log(`\n[${b.name}] done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } catch (err) {
    failed++;
    console.error(`\n[${b.name}] FAILED: ${(err as Error).stack ?? String(err)}`);
  }
}
console.log(`\ntotal ${((performance.now() - started) / 1000).toFixed(1)} s`);
if (failed > 0) process.exitCode = 1;
