/**
 * The agent's own Prometheus metrics: the text passes `promtool check metrics`
 * after real traffic, a model name the agent does not know never becomes a
 * label value, TensorFlow Serving's /monitoring/prometheus/metrics path, and
 * the metrics listener of its own (config `metrics`).
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, loadPackageDefinition, status as GrpcStatus, type Client } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../agent/config/load.js';
import { RENAMED_PROCESS_GAUGES, UNKNOWN_MODEL } from '../agent/telemetry/metrics.js';
import { fragileScaleModel, mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { postJson, startTestAgent, type TestAgent } from './helpers/agent.js';
import { freePort, spawnAgent } from './helpers/child.js';
import { PROTO_DIR } from './helpers/python-grpc.js';

/** `promtool check metrics` on a metrics text: its exit status and everything it printed (lint problems). */
function promtool(text: string): { status: number | null; printed: string } {
  const run = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  if (run.error) throw new Error(`promtool did not run (Debian: apt-get install prometheus): ${run.error.message}`);
  return { status: run.status, printed: `${run.stdout}${run.stderr}`.trim() };
}

/** Sample lines (not comments) of a metrics text. */
const samplesOf = (text: string): string[] => text.split('\n').filter((line) => line !== '' && !line.startsWith('#'));

/** The agent's own series: every `edgefleet_` sample but prom-client's process and Node.js metrics, whose series come and go with handle types and GC kinds. */
const ownSeries = (text: string): string[] => samplesOf(text).filter((line) => line.startsWith('edgefleet_') && !/^edgefleet_(process|nodejs)_/.test(line));

/** `# TYPE name type` lines, as name → type. */
const typesOf = (text: string): Map<string, string> =>
  new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1] as string, m[2] as string]));

/** The labels of each edgefleet_requests_total sample. */
function requestLabels(text: string): Record<string, string>[] {
  return samplesOf(text)
    .filter((line) => line.startsWith('edgefleet_requests_total{'))
    .map((line) => Object.fromEntries([...line.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1] as string, m[2] as string])));
}

/** The value of one sample, given its name and labels as they are printed; undefined when absent. */
function sampleValue(text: string, series: string): number | undefined {
  const line = samplesOf(text).find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

const mlpRow = (): number[] => Array.from({ length: 784 }, (_, i) => (i % 17) / 17);
const v2Body = (name: string, shape: number[], data: number[]): unknown => ({ inputs: [{ name, datatype: 'FP32', shape, data }] });

type Unary = (request: object, callback: (err: { code: number } | null) => void) => void;

interface GrpcClients {
  v2: Client & { ModelInfer: Unary };
  tf: Client & { Predict: Unary };
}

/** KServe v2 and TensorFlow Serving clients on grpc-js, from the agent's own .proto files. */
function grpcClients(target: string): GrpcClients {
  const definition = loadSync(['grpc_predict_v2.proto', 'tensorflow_serving/apis/prediction_service.proto'], { includeDirs: [PROTO_DIR], keepCase: true, longs: String });
  const pkg = loadPackageDefinition(definition) as any;
  return {
    v2: new pkg.inference.GRPCInferenceService(target, credentials.createInsecure()),
    tf: new pkg.tensorflow.serving.PredictionService(target, credentials.createInsecure()),
  };
}

/** One unary call; its gRPC status code (OK is 0). */
function call(method: Unary, request: object): Promise<number> {
  return new Promise((resolve) => method(request, (err) => resolve(err?.code ?? GrpcStatus.OK)));
}

/** KServe v2 ModelInfer of one MLP row, for the model `name`. */
const modelInfer = (name: string): Promise<number> =>
  call((request, callback) => grpc.v2.ModelInfer(request, callback), {
    model_name: name,
    inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 784] }],
    raw_input_contents: [Buffer.from(new Float32Array(mlpRow()).buffer)],
  });
/** TensorFlow Serving Predict, for the model `name`. */
const predict = (name: string): Promise<number> => call((request, callback) => grpc.tf.Predict(request, callback), { model_spec: { name }, inputs: {} });

let t: TestAgent;
let grpc: GrpcClients;
let metricsUrl: string;

beforeAll(async () => {
  // Batching on mlp, so that every metric family of the agent has samples for promtool to read.
  const models = { config: { mlp: { batching: { maxBatchSize: 4, maxQueueDelayMs: 1 } } } };
  t = await startTestAgent({ grpc: { port: 0 }, metrics: { port: 0 }, models }, async (dir) => {
    await writeModelTree(dir, 'mlp', 1, mlpModel());
    // Passes warm-up, then fails at run time for any x outside [0, 4): a model fault (500).
    await writeModelTree(dir, 'fragile', 1, fragileScaleModel(2));
    // Not ONNX: fails to load, so requests for it get 503.
    await writeModelTree(dir, 'broken', 1, new TextEncoder().encode('not an ONNX model'));
  });
  grpc = grpcClients(`127.0.0.1:${t.agent.grpcAddress?.port}`);
  metricsUrl = `http://127.0.0.1:${t.agent.metricsAddress?.port}`;
});
afterAll(async () => {
  grpc?.v2.close();
  grpc?.tf.close();
  await t?.close();
});

const scrape = async (base = t.url, path = '/metrics'): Promise<string> => {
  const res = await fetch(`${base}${path}`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
  return res.text();
};

describe('the agent\'s /metrics', () => {
  it('passes promtool check metrics with no warning after answers, errors and unknown names on every API', async () => {
    const v1 = (path: string, instances: unknown): Promise<number> => postJson(`${t.url}/v1/models/${path}:predict`, { instances }).then((r) => r.status);
    const v2 = (path: string, body: unknown): Promise<number> => postJson(`${t.url}/v2/models/${path}/infer`, body).then((r) => r.status);
    expect(await v1('mlp', [mlpRow()])).toBe(200);
    expect(await v2('mlp', v2Body('x', [1, 784], mlpRow()))).toBe(200);
    expect(await v2('mlp', v2Body('x', [1, 3], [1, 2, 3]))).toBe(400); // wrong shape
    expect(await v1('fragile', [[10]])).toBe(500); // model fault
    expect(await v2('broken', v2Body('x', [1, 1], [1]))).toBe(503); // failed to load
    expect(await v1('nope', [[1]])).toBe(404);
    expect(await v1('mlp/versions/7', [[1]])).toBe(404);
    expect(await v1('mlp/labels/nope', [[1]])).toBe(404);
    expect(await v2('nope', v2Body('x', [1, 1], [1]))).toBe(404);
    expect(await v1('mlp/versions/abc', [[1]])).toBe(400); // never reaches a model: not counted
    expect(await modelInfer('mlp')).toBe(GrpcStatus.OK);
    expect(await modelInfer('nope')).toBe(GrpcStatus.NOT_FOUND);
    expect(await predict('nope')).toBe(GrpcStatus.NOT_FOUND);

    const text = await scrape();
    expect(promtool(text)).toEqual({ status: 0, printed: '' });
    const families = [...typesOf(text).keys()].filter((name) => samplesOf(text).some((line) => line.startsWith(name)));
    expect(families).toEqual(expect.arrayContaining([
      'edgefleet_requests_total', 'edgefleet_request_queue_seconds', 'edgefleet_request_compute_seconds', 'edgefleet_request_duration_seconds',
      'edgefleet_batch_rows', 'edgefleet_requests_in_flight', 'edgefleet_model_load_duration_seconds', 'edgefleet_model_warmup_duration_seconds',
      'edgefleet_model_load_failures_total',
    ]));
    for (const [series, count] of [
      ['edgefleet_requests_total{model="mlp",version="1",api="v1",code="200"}', 1],
      ['edgefleet_requests_total{model="mlp",version="1",api="v2",code="400"}', 1],
      ['edgefleet_requests_total{model="fragile",version="1",api="v1",code="500"}', 1],
      ['edgefleet_requests_total{model="broken",version="",api="v2",code="503"}', 1],
      ['edgefleet_requests_total{model="mlp",version="",api="v1",code="404"}', 2],
      [`edgefleet_requests_total{model="${UNKNOWN_MODEL}",version="",api="v1",code="404"}`, 1],
      [`edgefleet_requests_total{model="${UNKNOWN_MODEL}",version="",api="v2",code="404"}`, 1],
      ['edgefleet_requests_total{model="mlp",version="1",api="grpc-v2",code="200"}', 1],
      [`edgefleet_requests_total{model="${UNKNOWN_MODEL}",version="",api="grpc-v2",code="404"}`, 1],
      [`edgefleet_requests_total{model="${UNKNOWN_MODEL}",version="",api="grpc-tf",code="404"}`, 1],
      ['edgefleet_model_load_failures_total{model="broken"}', 1],
    ] as const) {
      expect(sampleValue(text, series), series).toBe(count);
    }
    expect(text).not.toContain('"nope"');
  });

  it('names only counters with _total, and serves prom-client\'s three _total gauges under their new names', async () => {
    const types = typesOf(await scrape());
    for (const [name, type] of types) if (name.endsWith('_total')) expect(type, name).toBe('counter');
    for (const [old, renamed] of Object.entries(RENAMED_PROCESS_GAUGES)) {
      expect(types.has(old), old).toBe(false);
      expect(types.get(renamed), renamed).toBe('gauge');
    }
    expect(Object.values(RENAMED_PROCESS_GAUGES)).toEqual([
      'edgefleet_nodejs_active_handles_all',
      'edgefleet_nodejs_active_requests_all',
      'edgefleet_nodejs_active_resources_all',
    ]);
  });

  it('never makes a label value of a model name or version a client made up, whatever the API', async () => {
    const unknown = { model: UNKNOWN_MODEL, version: '' };
    const scans: { what: string; send: (name: string) => Promise<number>; refused: number; series: Record<string, string> }[] = [
      { what: 'v1 predict', send: (n) => postJson(`${t.url}/v1/models/${n}:predict`, { instances: [[1]] }).then((r) => r.status), refused: 404, series: { ...unknown, api: 'v1', code: '404' } },
      { what: 'v1 status (not an inference request)', send: (n) => fetch(`${t.url}/v1/models/${n}`).then((r) => r.status), refused: 404, series: { ...unknown, api: 'v1', code: '404' } },
      { what: 'v2 infer', send: (n) => postJson(`${t.url}/v2/models/${n}/infer`, v2Body('x', [1, 1], [1])).then((r) => r.status), refused: 404, series: { ...unknown, api: 'v2', code: '404' } },
      { what: 'gRPC ModelInfer', send: modelInfer, refused: GrpcStatus.NOT_FOUND, series: { ...unknown, api: 'grpc-v2', code: '404' } },
      { what: 'gRPC Predict', send: predict, refused: GrpcStatus.NOT_FOUND, series: { ...unknown, api: 'grpc-tf', code: '404' } },
    ];
    const randomVersion = (): string => String(randomInt(2, 2 ** 40));
    const versionScan = (v: string): Promise<number> => postJson(`${t.url}/v2/models/mlp/versions/${v}/infer`, v2Body('x', [1, 784], mlpRow())).then((r) => r.status);
    // Once first, so that every series a refusal counts in exists before the scan.
    for (const s of scans) expect(await s.send(`first-${s.what.length}`), s.what).toBe(s.refused);
    expect(await versionScan(randomVersion())).toBe(404);
    const before = await scrape();
    const count = (text: string, labels: Record<string, string>): number =>
      sampleValue(text, `edgefleet_requests_total{model="${labels.model}",version="${labels.version}",api="${labels.api}",code="${labels.code}"}`) ?? 0;

    const ROUNDS = 40;
    const sent: string[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      for (const s of scans) {
        const name = `scan-${randomBytes(6).toString('hex')}`;
        sent.push(name);
        expect(await s.send(name), `${s.what} ${name}`).toBe(s.refused);
      }
      const version = randomVersion();
      sent.push(version);
      expect(await versionScan(version)).toBe(404);
    }
    const after = await scrape();
    expect(sent.filter((name) => after.includes(name)), 'made-up names or versions in /metrics').toEqual([]);
    expect(ownSeries(after).length).toBe(ownSeries(before).length);
    // Each inference refusal still counts, under the placeholder; the status lookup is no inference request.
    const inference = scans.filter((s) => !s.what.includes('status'));
    for (const s of inference) {
      const expected = ROUNDS * inference.filter((o) => o.series.api === s.series.api).length;
      expect(count(after, s.series) - count(before, s.series), s.what).toBe(expected);
    }
    expect(count(after, { model: 'mlp', version: '', api: 'v2', code: '404' }) - count(before, { model: 'mlp', version: '', api: 'v2', code: '404' })).toBe(ROUNDS);
    // The other labels hold fixed sets: versions the agent serves, the four APIs, HTTP status codes.
    for (const labels of requestLabels(after)) {
      expect(Object.keys(labels)).toEqual(['model', 'version', 'api', 'code']);
      expect(['mlp', 'fragile', 'broken', UNKNOWN_MODEL]).toContain(labels.model);
      expect(['', '1']).toContain(labels.version);
      expect(['v1', 'v2', 'grpc-v2', 'grpc-tf']).toContain(labels.api);
      expect(labels.code).toMatch(/^[1-5][0-9]{2}$/);
    }
  });
});

describe('GET /monitoring/prometheus/metrics (TensorFlow Serving\'s path)', () => {
  it('answers the metrics text on the inference API and on the metrics listener', async () => {
    const requests = (text: string): string[] => samplesOf(text).filter((l) => l.startsWith('edgefleet_requests_total'));
    const texts = [await scrape(t.url), await scrape(t.url, '/monitoring/prometheus/metrics'), await scrape(metricsUrl), await scrape(metricsUrl, '/monitoring/prometheus/metrics')];
    const [first] = texts as [string];
    expect(requests(first).length).toBeGreaterThan(0);
    for (const text of texts) {
      expect(promtool(text)).toEqual({ status: 0, printed: '' });
      // Process figures move between scrapes; the metric names and request counts do not.
      expect([...typesOf(text)]).toEqual([...typesOf(first)]);
      expect(requests(text)).toEqual(requests(first));
    }
  });
});

describe('the metrics listener (config metrics.host, metrics.port)', () => {
  it('serves the metrics text and a 404 for every other endpoint, so it reaches no model', async () => {
    const head = await fetch(`${metricsUrl}/metrics`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
    expect((await fetch(`${metricsUrl}/metrics?name[]=x`)).status).toBe(200);
    for (const [method, path] of [
      ['GET', '/v2/health/ready'],
      ['GET', '/v2'],
      ['GET', '/v1/models/mlp'],
      ['POST', '/v1/models/mlp:predict'],
      ['POST', '/v2/models/mlp/infer'],
      ['GET', '/v1/models/mlp/versions/abc'],
      ['PUT', '/metrics'],
      ['POST', '/monitoring/prometheus/metrics'],
      ['GET', '/metrics/'],
      ['GET', '/'],
    ] as const) {
      const res = await fetch(`${metricsUrl}${path}`, { method, ...(method === 'GET' ? {} : { body: '{}' }) });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(await res.json()).toEqual({
        error: `no such endpoint on the metrics listener: ${method} ${path} (it serves GET /metrics and /monitoring/prometheus/metrics)`,
      });
    }
  });

  it('is off unless configured; `"metrics": {}` listens on 127.0.0.1:8502', () => {
    expect(parseConfig({ deviceId: 'pi' }).metrics).toBeUndefined();
    expect(parseConfig({ deviceId: 'pi', metrics: {} }).metrics).toEqual({ host: '127.0.0.1', port: 8502 });
    expect(parseConfig({ deviceId: 'pi', metrics: { host: '0.0.0.0', port: 9100 } }).metrics).toEqual({ host: '0.0.0.0', port: 9100 });
    for (const host of ['::', '192.168.1.20', 'localhost', 'board-7.lan']) expect(parseConfig({ deviceId: 'pi', metrics: { host } }).metrics?.host).toBe(host);
    // Port 0 picks a free port for each listener, so it never clashes.
    expect(parseConfig({ deviceId: 'pi', http: { port: 0 }, metrics: { port: 0 } }).metrics?.port).toBe(0);
  });

  it('refuses bad values with one line per problem, naming the key', () => {
    const problems = (raw: Record<string, unknown>): string[] => {
      const error = (() => {
        try {
          parseConfig({ deviceId: 'pi', ...raw });
        } catch (err) {
          return err;
        }
        return undefined;
      })();
      expect(error, JSON.stringify(raw)).toBeInstanceOf(ConfigError);
      return (error as ConfigError).problems;
    };
    const HOST = 'metrics.host: must be an IP address or a host name, such as "0.0.0.0", "::" or "localhost", without a scheme or port';
    // Port out of range, not a whole number, not a number.
    expect(problems({ metrics: { port: 65536 } })).toEqual(['metrics.port: Too big: expected number to be <=65535']);
    expect(problems({ metrics: { port: -1 } })).toEqual(['metrics.port: Too small: expected number to be >=0']);
    expect(problems({ metrics: { port: 9100.5 } })).toEqual(['metrics.port: Invalid input: expected int, received number']);
    expect(problems({ metrics: { port: '9100' } })).toEqual(['metrics.port: Invalid input: expected number, received string']);
    // A URL, a host with its port, an empty or spaced string, not a string.
    for (const host of ['http://0.0.0.0', '0.0.0.0:9100', '[::]:9100', '', 'my board', '-board']) expect(problems({ metrics: { host } }), host).toEqual([HOST]);
    expect(problems({ metrics: { host: 9100 } })).toEqual(['metrics.host: Invalid input: expected string, received number']);
    // The port of another listener of the agent.
    expect(problems({ metrics: { port: 8501 } })).toEqual(['metrics.port: must differ from http.port (8501): the metrics listener needs a port of its own']);
    expect(problems({ http: { port: 9000 }, metrics: { port: 9000 } })).toEqual(['metrics.port: must differ from http.port (9000): the metrics listener needs a port of its own']);
    expect(problems({ grpc: {}, metrics: { port: 8500 } })).toEqual(['metrics.port: must differ from grpc.port (8500): the metrics listener needs a port of its own']);
    // A misspelt key, and every problem at once.
    expect(problems({ metrics: { prot: 9100 } })).toEqual(['metrics: unknown key(s) "prot" (did you mean port?)']);
    expect(problems({ metrics: { host: 'http://x', port: 'x' } })).toEqual([HOST, 'metrics.port: Invalid input: expected number, received string']);
  });

  it('needs no bearer token when the API does', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-metrics-'));
    const tokensFile = join(dir, 'tokens');
    await writeFile(tokensFile, `sha256:${createHash('sha256').update('secret').digest('hex')} ci\n`);
    const guarded = await startTestAgent({ api: { tokensFile }, metrics: { port: 0 } });
    try {
      const listener = `http://127.0.0.1:${guarded.agent.metricsAddress?.port}`;
      for (const path of ['/metrics', '/monitoring/prometheus/metrics']) {
        expect((await fetch(`${guarded.url}${path}`)).status, `API ${path}`).toBe(401);
        expect((await fetch(`${guarded.url}${path}`, { headers: { authorization: 'Bearer secret' } })).status, `API ${path} with the token`).toBe(200);
        expect(await scrape(listener, path)).toContain('edgefleet_requests_in_flight');
      }
    } finally {
      await guarded.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('closes on SIGTERM with the rest of a real agent process', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-metrics-'));
    try {
      const port = await freePort();
      const child = await spawnAgent(dir, { metrics: { host: '127.0.0.1', port } });
      const url = `http://127.0.0.1:${port}`;
      expect(promtool(await scrape(url))).toEqual({ status: 0, printed: '' });
      child.proc.kill('SIGTERM');
      expect(await child.exited).toEqual({ code: 0, signal: null });
      await expect(fetch(`${url}/metrics`)).rejects.toThrow();
      expect(child.output()).toContain('metrics listener listening');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a metrics port already taken', () => {
  it('stops a real agent process at start, with an error naming the address', async () => {
    const port = await freePort();
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-metrics-'));
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(port, '127.0.0.1', resolve));
    try {
      await expect(spawnAgent(dir, { metrics: { port } })).rejects.toThrow(new RegExp(`agent exited early \\(1\\)[^]*EADDRINUSE[^]*127\\.0\\.0\\.1:${port}`));
    } finally {
      holder.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
