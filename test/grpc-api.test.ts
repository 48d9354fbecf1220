/**
 * The gRPC API against clients no one here wrote: Python's grpcio with stubs
 * generated at test time from agent/grpc/proto (test/grpc/tutorial_client.py,
 * written as the TensorFlow Serving and Triton tutorials write theirs). Same
 * models, versions, labels, metrics and errors as the HTTP API.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, loadPackageDefinition, type ServiceClientConstructor } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../agent/config/load.js';
import type { Datatype } from '../agent/runtime/tensor.js';
import { agentVersion } from '../agent/version.js';
import type { ElemType } from '../models/onnx/builder.js';
import { identityModel, mlpModel, multiIoModel, writeModelTree } from '../models/onnx/zoo.js';
import { postJson, startTestAgent, type TestAgent } from './helpers/agent.js';
import { PROTO_DIR, pythonClient, pythonGrpc, pythonGrpcSkipReason, type PythonClient } from './helpers/python-grpc.js';
import { SAMPLES } from './helpers/tensor-samples.js';

const ELEM: Record<Datatype, ElemType> = {
  BOOL: 'bool', UINT8: 'uint8', INT8: 'int8', UINT16: 'uint16', INT16: 'int16', UINT32: 'uint32',
  INT32: 'int32', UINT64: 'uint64', INT64: 'int64', FP16: 'float16', FP32: 'float32', FP64: 'float64', BYTES: 'string',
};
const DATATYPES = Object.keys(ELEM) as Datatype[];

/** SAMPLES as the Python client reports values back: 64-bit integers as decimal strings. */
function expected(dt: Datatype): unknown[] {
  return SAMPLES[dt].map((v) => (dt === 'INT64' || dt === 'UINT64' ? String(v) : v));
}

describe('gRPC config', () => {
  it('is off without the key, on 127.0.0.1:8500 with "grpc": {}, and needs a socket when the port is null', () => {
    expect(parseConfig({ deviceId: 'pi-1' }).grpc).toBeUndefined();
    expect(parseConfig({ deviceId: 'pi-1', grpc: {} }).grpc).toEqual({ host: '127.0.0.1', port: 8500, maxMessageBytes: 64 * 1024 * 1024, maxInFlight: 1024 });
    expect(parseConfig({ deviceId: 'pi-1', grpc: { port: null, socket: '/run/edgefleet/grpc.sock' } }).grpc?.port).toBeNull();
    expect(() => parseConfig({ deviceId: 'pi-1', grpc: { port: null } })).toThrow(/grpc\.port.*"socket" must be set/s);
    expect(() => parseConfig({ deviceId: 'pi-1', api: { tls: { cert: '/a.pem' } } })).toThrow(/api\.tls\.key/);
  });
});

const skip = pythonGrpcSkipReason();
const MAX_MESSAGE = 1024 * 1024;
let t: TestAgent;
let py: PythonClient;
let target: string;
let socket: string;
let socketDir: string;

/** One call of a scenario; its `{ok}` or `{code, details}`. */
async function one<T = any>(scenario: string, args: object): Promise<{ ok?: T; code?: string; details?: string }> {
  const [result] = await py.call<T>(target, scenario, [args]);
  if (!result) throw new Error('the client printed no result');
  return result;
}

const mlpInput = (typed = false): Record<string, unknown> => ({
  x: { datatype: 'FP32', shape: [2, 784], values: Array.from({ length: 2 * 784 }, (_, i) => ((i * 37) % 101) / 101), typed },
});

describe.skipIf(skip)('gRPC API with a Python grpcio client', () => {
  beforeAll(async () => {
    py = await pythonClient(pythonGrpc() as string);
    socketDir = await mkdtemp(join(tmpdir(), 'edgefleet-grpc-'));
    socket = join(socketDir, 'grpc.sock');
    t = await startTestAgent(
      { grpc: { port: 0, socket, maxMessageBytes: MAX_MESSAGE }, models: { config: { mlp: { labels: { stable: 1 } }, mlp_batched: { batching: { maxBatchSize: 16, maxQueueDelayMs: 50 } } } } },
      async (dir) => {
        for (const dt of DATATYPES) await writeModelTree(dir, `id-${ELEM[dt]}`, 1, identityModel(ELEM[dt]));
        await writeModelTree(dir, 'multi', 1, multiIoModel());
        await writeModelTree(dir, 'mlp', 1, mlpModel());
        await writeModelTree(dir, 'mlp_batched', 1, mlpModel());
      },
    );
    target = `127.0.0.1:${t.agent.grpcAddress?.port ?? 0}`;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    await py?.close();
    await rm(socketDir, { recursive: true, force: true });
  });

  describe('TensorFlow Serving PredictionService', () => {
    it('Predict answers as the REST API does, from tensor_content and from float_val, in typed fields', async () => {
      const rest = await postJson(`${t.url}/v1/models/mlp:predict`, { inputs: { x: [(mlpInput().x as { values: number[] }).values.slice(0, 784), (mlpInput().x as { values: number[] }).values.slice(784)] } });
      expect(rest.status).toBe(200);
      const [content, typed] = await py.call(target, 'predict', [{ model: 'mlp', inputs: mlpInput(false) }, { model: 'mlp', inputs: mlpInput(true) }]);
      for (const r of [content, typed]) {
        expect(r?.ok.modelSpec).toEqual({ name: 'mlp', version: 1, signature: 'serving_default' });
        const probs = r?.ok.outputs.probs;
        expect(probs.datatype).toBe('FP32');
        expect(probs.shape).toEqual([2, 10]);
        expect(probs.typed).toBe(true);
        expect(probs.values).toEqual((rest.json.outputs as number[][]).flat().map((v) => Math.fround(v)));
      }
    });

    it('selects versions by number and label, and names an unknown one', async () => {
      const results = await py.call(target, 'predict', [
        { model: 'mlp', version: 1, inputs: mlpInput() },
        { model: 'mlp', label: 'stable', inputs: mlpInput() },
        { model: 'mlp', version: 7, inputs: mlpInput() },
        { model: 'mlp', label: 'canary', inputs: mlpInput() },
      ]);
      expect(results[0]?.ok.modelSpec.version).toBe(1);
      expect(results[1]?.ok.modelSpec.version).toBe(1);
      expect(results[2]).toEqual({ code: 'NOT_FOUND', details: 'model "mlp" has no version 7' });
      expect(results[3]).toEqual({ code: 'NOT_FOUND', details: 'model "mlp" has no label "canary"' });
    });

    it('output_filter returns only the outputs asked for', async () => {
      const pair = { datatype: 'FP32', shape: [1, 4], values: [1, 5, 3, 2] };
      const r = await one('predict', { model: 'multi', inputs: { a: pair, b: pair }, outputFilter: ['argmax'] });
      expect(Object.keys(r.ok.outputs)).toEqual(['argmax']);
      expect(r.ok.outputs.argmax).toMatchObject({ datatype: 'INT64', values: ['1'] });
    });

    it('GetModelMetadata gives the signature in a SignatureDefMap; GetModelStatus the version states', async () => {
      const meta = await one('tf-metadata', { model: 'mlp' });
      expect(meta.ok).toEqual({
        version: 1,
        typeUrl: 'type.googleapis.com/tensorflow.serving.SignatureDefMap',
        inputs: { x: { dtype: 'DT_FLOAT', shape: [-1, 784] } },
        outputs: { probs: { dtype: 'DT_FLOAT', shape: [-1, 10] } },
        method: 'tensorflow/serving/predict',
      });
      expect((await one('tf-metadata', { model: 'mlp', field: 'graph' })).code).toBe('INVALID_ARGUMENT');
      expect((await one('tf-status', { model: 'mlp' })).ok).toEqual([{ version: 1, state: 'AVAILABLE', errorCode: 0 }]);
      expect(await one('tf-status', { model: 'nope' })).toEqual({ code: 'NOT_FOUND', details: 'model "nope" is not known to this server' });
    });
  });

  describe('KServe v2 GRPCInferenceService', () => {
    it('server and model health and metadata', async () => {
      expect((await one('v2-server', {})).ok).toEqual({ live: true, ready: true, name: 'edgefleet', version: agentVersion(), extensions: ['model_repository'] });
      expect((await one('v2-model', { model: 'mlp' })).ok).toEqual({
        ready: true,
        name: 'mlp',
        versions: ['1'],
        platform: 'onnxruntime_onnx',
        inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 784] }],
        outputs: [{ name: 'probs', datatype: 'FP32', shape: [-1, 10] }],
      });
      expect((await one('v2-model', { model: 'mlp', version: '3' })).code).toBe('NOT_FOUND');
    });

    it('ModelInfer with raw contents answers raw, as the HTTP binary extension does', async () => {
      const x = mlpInput().x as { values: number[] };
      const rest = await postJson(`${t.url}/v2/models/mlp/infer`, { inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 784], data: x.values }] });
      const r = await one('model-infer', { model: 'mlp', id: 'req-7', inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 784], values: x.values }] });
      expect(r.ok).toMatchObject({ modelName: 'mlp', modelVersion: '1', id: 'req-7', raw: true });
      expect(r.ok.outputs).toEqual([{ name: 'probs', datatype: 'FP32', shape: [2, 10], values: (rest.json.outputs[0].data as number[]).map((v) => Math.fround(v)) }]);
    });

    it('ModelInfer answers the requested outputs in the order asked', async () => {
      const pair = { datatype: 'FP32', shape: [1, 4], values: [1, 5, 3, 2] };
      const r = await one('model-infer', { model: 'multi', raw: false, inputs: [{ name: 'a', ...pair }, { name: 'b', ...pair }], outputs: ['argmax', 'sum'] });
      expect(r.ok.raw).toBe(false);
      expect(r.ok.outputs.map((o: { name: string }) => o.name)).toEqual(['argmax', 'sum']);
      expect(r.ok.outputs[1].values).toEqual([2, 10, 6, 4]);
    });
  });

  it('every datatype of the HTTP API round-trips: TF typed fields and tensor_content, KServe raw and typed contents', async () => {
    const tensor = (dt: Datatype): { datatype: Datatype; shape: number[]; values: unknown[] } => ({ datatype: dt, shape: [2, 2], values: SAMPLES[dt] });
    const tfCalls = DATATYPES.flatMap((dt) => [
      { model: `id-${ELEM[dt]}`, inputs: { x: { ...tensor(dt), typed: true } } },
      ...(dt === 'BYTES' ? [] : [{ model: `id-${ELEM[dt]}`, inputs: { x: { ...tensor(dt), typed: false } } }]),
    ]);
    const v2Calls = DATATYPES.flatMap((dt) => [
      { model: `id-${ELEM[dt]}`, raw: true, inputs: [{ name: 'x', ...tensor(dt) }] },
      ...(dt === 'FP16' ? [] : [{ model: `id-${ELEM[dt]}`, raw: false, inputs: [{ name: 'x', ...tensor(dt) }] }]),
    ]);
    const [tf, v2] = await Promise.all([py.call(target, 'predict', tfCalls), py.call(target, 'model-infer', v2Calls)]);
    tf.forEach((r, k) => {
      const dt = tfCalls[k]?.inputs.x.datatype as Datatype;
      expect(r, `TF ${dt}`).toMatchObject({ ok: { outputs: { y: { datatype: dt, shape: [2, 2], values: expected(dt) } } } });
    });
    v2.forEach((r, k) => {
      const call = v2Calls[k];
      const dt = call?.inputs[0]?.datatype as Datatype;
      expect(r, `KServe ${dt} raw ${String(call?.raw)}`).toMatchObject({ ok: { raw: call?.raw, outputs: [{ name: 'y', datatype: dt, shape: [2, 2], values: expected(dt) }] } });
    });
  });

  it('bad requests get INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED or RESOURCE_EXHAUSTED with a message naming the input', async () => {
    const x = (over: object = {}): object => ({ x: { datatype: 'FP32', shape: [1, 784], values: [0.5], repeat: 784, ...over } });
    const tf: [object, string, string][] = [
      [{ model: 'nope', inputs: x() }, 'NOT_FOUND', 'model "nope" is not known'],
      [{ model: 'mlp', inputs: x({ dtype: 'DT_DOUBLE' }) }, 'INVALID_ARGUMENT', 'input "x": dtype DT_DOUBLE does not match the model\'s DT_FLOAT'],
      [{ model: 'mlp', inputs: x({ dtype: 'DT_BFLOAT16' }) }, 'UNIMPLEMENTED', 'input "x": dtype DT_BFLOAT16 is not supported'],
      [{ model: 'mlp', inputs: x({ shape: [1, 392], repeat: 392 }) }, 'INVALID_ARGUMENT', 'input "x": shape [1,392]'],
      [{ model: 'mlp', inputs: x({ contentBytes: 100 }) }, 'INVALID_ARGUMENT', 'input "x": tensor_content has 100 bytes, but shape [1,784] of DT_FLOAT needs 3136'],
      [{ model: 'mlp', inputs: x({ typed: true, repeat: 3, shape: [1, 3], wireShape: [1, 784] }) }, 'INVALID_ARGUMENT', 'input "x": float_val has 3 values, but shape [1,784] needs 784'],
      [{ model: 'mlp', inputs: { ...x(), z: { datatype: 'FP32', shape: [1], values: [1] } } }, 'INVALID_ARGUMENT', 'unknown input "z"'],
      [{ model: 'multi', inputs: { a: { datatype: 'FP32', shape: [1, 4], values: [1, 2, 3, 4] } } }, 'INVALID_ARGUMENT', 'input "b" is missing'],
      [{ model: 'mlp', signature: 'classify', inputs: x() }, 'INVALID_ARGUMENT', 'signature_name "classify"'],
      [{ model: 'mlp', inputs: x(), outputFilter: ['logits'] }, 'INVALID_ARGUMENT', 'unknown output "logits"'],
      [{ model: 'id-int8', inputs: { x: { datatype: 'INT16', dtype: 'DT_INT8', shape: [1, 1], values: [300], typed: true } } }, 'INVALID_ARGUMENT', 'input "x": element 0 is 300, out of range for INT8'],
      [{ model: 'id-float32', inputs: { x: { datatype: 'FP32', shape: [1, 300_000], values: [1], repeat: 300_000 } } }, 'RESOURCE_EXHAUSTED', ''],
    ];
    const raw = (over: object = {}): object => ({ name: 'x', datatype: 'FP32', shape: [1, 784], values: [0.5], repeat: 784, ...over });
    const v2: [object, string, string][] = [
      [{ model: 'nope', inputs: [raw()] }, 'NOT_FOUND', 'model "nope" is not known'],
      [{ model: 'mlp', version: 'latest', inputs: [raw()] }, 'INVALID_ARGUMENT', 'model version "latest" is not a positive integer'],
      [{ model: 'mlp', inputs: [raw({ wireDatatype: 'FP64' })] }, 'INVALID_ARGUMENT', 'input "x": datatype FP64 does not match the model\'s FP32'],
      [{ model: 'mlp', inputs: [raw({ wireDatatype: 'FP8' })] }, 'INVALID_ARGUMENT', 'input "x": unknown datatype "FP8"'],
      [{ model: 'mlp', inputs: [raw({ wireDatatype: 'BF16' })] }, 'UNIMPLEMENTED', 'input "x": datatype BF16 is not supported'],
      [{ model: 'mlp', inputs: [raw({ rawBytes: 10 })] }, 'INVALID_ARGUMENT', 'input "x": raw_input_contents has 10 bytes, but shape [1,784] of FP32 needs 3136'],
      [{ model: 'mlp', inputs: [raw({ name: 'y' })] }, 'INVALID_ARGUMENT', 'unknown input "y"'],
      [{ model: 'mlp', inputs: [raw()], outputs: ['logits'] }, 'INVALID_ARGUMENT', 'unknown output "logits"'],
      [{ model: 'mlp', raw: false, inputs: [raw({ field: 'fp64_contents' })] }, 'INVALID_ARGUMENT', 'input "x": FP32 elements go in contents.fp32_contents, not fp64_contents'],
      [{ model: 'mlp', raw: false, inputs: [raw({ repeat: 3, shape: [1, 3], wireShape: [1, 784] })] }, 'INVALID_ARGUMENT', 'input "x": contents.fp32_contents has 3 elements, but shape [1,784] needs 784'],
      [{ model: 'id-float16', raw: false, inputs: [{ name: 'x', datatype: 'FP16', shape: [1, 1], values: [1] }] }, 'INVALID_ARGUMENT', 'input "x": FP16 has no contents field; send its bytes in raw_input_contents'],
      [{ model: 'id-bool', inputs: [{ name: 'x', datatype: 'UINT8', wireDatatype: 'BOOL', shape: [1, 1], values: [7] }] }, 'INVALID_ARGUMENT', 'input "x": BOOL element 0 is byte 7'],
      [{ model: 'id-string', inputs: [{ name: 'x', datatype: 'BYTES', shape: [1, 1], wireShape: [1, 2], values: ['a'] }] }, 'INVALID_ARGUMENT', 'input "x": 2 BYTES elements need at least 8 bytes'],
    ];
    const [tfResults, v2Results] = await Promise.all([
      py.call(target, 'predict', tf.map(([args]) => args)),
      py.call(target, 'model-infer', v2.map(([args]) => args)),
    ]);
    const check = (cases: [object, string, string][], results: { code?: string; details?: string }[], api: string): void => {
      cases.forEach(([args, code, message], k) => {
        const r = results[k];
        expect(r?.code, `${api} case ${k}: ${JSON.stringify(r)}`).toBe(code);
        expect(r?.details, `${api} case ${k} ${JSON.stringify(args).slice(0, 80)}`).toContain(message);
      });
    };
    check(tf, tfResults, 'TF');
    check(v2, v2Results, 'KServe');
  });

  it('counts gRPC requests in /metrics under their own api label, with the HTTP status they map to', async () => {
    await py.call(target, 'predict', [{ model: 'mlp', inputs: mlpInput() }, { model: 'mlp', inputs: { x: { datatype: 'FP32', shape: [1, 3], values: [1, 2, 3] } } }]);
    await py.call(target, 'model-infer', [{ model: 'mlp', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 784], values: [0], repeat: 784 }] }]);
    const text = await (await fetch(`${t.url}/metrics`)).text();
    expect(text).toMatch(/edgefleet_requests_total\{model="mlp",version="1",api="grpc-tf",code="200"\} [1-9]/);
    expect(text).toMatch(/edgefleet_requests_total\{model="mlp",version="1",api="grpc-tf",code="400"\} [1-9]/);
    expect(text).toMatch(/edgefleet_requests_total\{model="mlp",version="1",api="grpc-v2",code="200"\} [1-9]/);
  });

  it('serves the standard health service: Check and Watch, NOT_FOUND for an unknown service', async () => {
    const results = await py.call(target, 'health', [{}, { service: 'inference.GRPCInferenceService' }, { service: 'nope.Service' }, { watch: true }]);
    expect(results).toEqual([{ ok: 'SERVING' }, { ok: 'SERVING' }, { code: 'NOT_FOUND', details: 'service "nope.Service" is not served here' }, { ok: 'SERVING' }]);
  });

  it('concurrent gRPC calls share dynamic batches, as HTTP requests do', async () => {
    // grpc-js here: the Python client calls one at a time.
    const definition = loadSync(['grpc_predict_v2.proto'], { includeDirs: [PROTO_DIR], keepCase: true, longs: String });
    const { inference } = loadPackageDefinition(definition) as unknown as { inference: { GRPCInferenceService: ServiceClientConstructor } };
    const client = new inference.GRPCInferenceService(target, credentials.createInsecure()) as unknown as {
      ModelInfer(request: object, callback: (err: Error | null, response: { raw_output_contents: Buffer[] }) => void): void;
      close(): void;
    };
    const x = Buffer.from(new Float32Array(784).fill(0.25).buffer);
    const call = (): Promise<{ raw_output_contents: Buffer[] }> =>
      new Promise((resolve, reject) => client.ModelInfer({ model_name: 'mlp_batched', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 784] }], raw_input_contents: [x] }, (err, r) => (err ? reject(err) : resolve(r))));
    const answers = await Promise.all(Array.from({ length: 16 }, call));
    client.close();
    for (const a of answers) expect(a.raw_output_contents[0]?.length).toBe(40);
    const text = await (await fetch(`${t.url}/metrics`)).text();
    const count = Number(/edgefleet_batch_rows_count\{model="mlp_batched",version="1"\} (\d+)/.exec(text)?.[1]);
    const rows = Number(/edgefleet_batch_rows_sum\{model="mlp_batched",version="1"\} (\d+)/.exec(text)?.[1]);
    expect(rows).toBe(16);
    expect(count).toBeLessThan(16);
  });

  it('serves the same API on the Unix socket', async () => {
    const [r] = await py.call(`unix:${socket}`, 'v2-server', [{}]);
    expect(r?.ok.live).toBe(true);
  });
});
