import { Buffer } from 'node:buffer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Datatype } from '../agent/runtime/tensor.js';
import { agentVersion } from '../agent/version.js';
import type { ElemType } from '../models/onnx/builder.js';
import { castModel, identityModel, mlpModel, multiIoModel, staticShapeModel, writeModelTree } from '../models/onnx/zoo.js';
import { getJson, postJson, startTestAgent, type TestAgent } from './helpers/agent.js';
import { SAMPLES } from './helpers/tensor-samples.js';

/** The 13 Open Inference Protocol datatypes and the identity model element type of each. */
const ELEM: Record<Datatype, ElemType> = {
  BOOL: 'bool', UINT8: 'uint8', INT8: 'int8', UINT16: 'uint16', INT16: 'int16', UINT32: 'uint32',
  INT32: 'int32', UINT64: 'uint64', INT64: 'int64', FP16: 'float16', FP32: 'float32', FP64: 'float64', BYTES: 'string',
};
type Dt = Datatype;
const DATATYPES = Object.keys(ELEM) as Dt[];


/** IEEE half bit patterns of SAMPLES.FP16. */
const FP16_BITS = [0x0000, 0xbe00, 0x7bff, 0x0001];

/** Little-endian tensor bytes for sample values, written independently of the agent's codec. */
function le(dt: Dt, values: readonly unknown[]): Buffer {
  if (dt === 'BYTES') {
    return Buffer.concat(values.map((v) => {
      const s = Buffer.from(v as string, 'utf8');
      const len = Buffer.alloc(4);
      len.writeUInt32LE(s.length);
      return Buffer.concat([len, s]);
    }));
  }
  const size = { BOOL: 1, UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, FP16: 2, UINT32: 4, INT32: 4, FP32: 4, UINT64: 8, INT64: 8, FP64: 8 }[dt] ?? 0;
  const out = Buffer.alloc(size * values.length);
  values.forEach((v, i) => {
    const o = i * size;
    switch (dt) {
      case 'BOOL': out.writeUInt8(v ? 1 : 0, o); break;
      case 'UINT8': out.writeUInt8(v as number, o); break;
      case 'INT8': out.writeInt8(v as number, o); break;
      case 'UINT16': out.writeUInt16LE(v as number, o); break;
      case 'INT16': out.writeInt16LE(v as number, o); break;
      case 'FP16': out.writeUInt16LE(FP16_BITS[SAMPLES.FP16.indexOf(v)] ?? 0xffff, o); break;
      case 'UINT32': out.writeUInt32LE(v as number, o); break;
      case 'INT32': out.writeInt32LE(v as number, o); break;
      case 'FP32': out.writeFloatLE(v as number, o); break;
      case 'UINT64': out.writeBigUInt64LE(BigInt(v as number | string), o); break;
      case 'INT64': out.writeBigInt64LE(BigInt(v as number | string), o); break;
      case 'FP64': out.writeDoubleLE(v as number, o); break;
    }
  });
  return out;
}

interface V2Output { name: string; datatype: string; shape: number[]; data?: unknown[]; parameters?: { binary_data_size?: number } }
interface V2Response { status: number; contentType: string | null; json: any; binary: Map<string, Buffer> }

/** POSTs a v2 infer with the binary extension: JSON header, then the raw chunks. */
async function postBinary(url: string, header: unknown, chunks: Buffer[] = []): Promise<V2Response> {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(json.length) },
    body: Buffer.concat([json, ...chunks]),
  });
  return parseV2(res);
}

/** Splits a v2 response by its Inference-Header-Content-Length into JSON and per-output bytes. */
async function parseV2(res: Response): Promise<V2Response> {
  const body = Buffer.from(await res.arrayBuffer());
  const raw = res.headers.get('inference-header-content-length');
  const n = raw === null ? body.length : Number(raw);
  const json = JSON.parse(body.toString('utf8', 0, n));
  const binary = new Map<string, Buffer>();
  let at = n;
  for (const o of (json.outputs ?? []) as V2Output[]) {
    const size = o.parameters?.binary_data_size;
    if (size === undefined) continue;
    binary.set(o.name, body.subarray(at, at + size));
    at += size;
  }
  expect(at, 'binary outputs cover the body exactly').toBe(body.length);
  return { status: res.status, contentType: res.headers.get('content-type'), json, binary };
}

const tensor = (name: string, datatype: string, shape: number[], data: unknown[]): Record<string, unknown> => ({ name, datatype, shape, data });
const f32 = (...xs: number[]): Buffer => le('FP32', xs);
const mlpRow = (k: number): number[] => Array.from({ length: 784 }, (_, i) => ((i * 7 + k * 13) % 256) / 255);
const MULTI_A = [[1, 5, 2, 0], [-1, -2, -3, -4]];
const MULTI_B = [[2, 0.5, 4, 1], [3, 1, 10, 2]];
const V1_STATUS = { model_version_status: [{ version: '1', state: 'AVAILABLE', status: { error_code: 'OK', error_message: '' } }] };

let t: TestAgent;
const url = (path: string): string => `${t.url}${path}`;

beforeAll(async () => {
  t = await startTestAgent({ models: { config: { mlp: { labels: { stable: 1 } } } } }, async (dir) => {
    for (const dt of DATATYPES) await writeModelTree(dir, `id-${ELEM[dt]}`, 1, identityModel(ELEM[dt]));
    await writeModelTree(dir, 'multi', 1, multiIoModel());
    await writeModelTree(dir, 'mlp', 1, mlpModel());
    await writeModelTree(dir, 'static', 1, staticShapeModel());
    await writeModelTree(dir, 'cast', 1, castModel());
  });
});
afterAll(async () => {
  await t?.close();
});

describe('TensorFlow Serving REST v1', () => {
  it.each(['/v1/models/mlp', '/v1/models/mlp/versions/1', '/v1/models/mlp/labels/stable'])('GET %s gives the model status', async (path) => {
    expect(await getJson(url(path))).toEqual({ status: 200, json: V1_STATUS });
  });

  it('GET metadata gives the signature_def with DT_ types and dims', async () => {
    const { status, json } = await getJson(url('/v1/models/multi/metadata'));
    expect(status).toBe(200);
    expect(json.model_spec).toEqual({ name: 'multi', signature_name: '', version: '1' });
    const sig = json.metadata.signature_def.signature_def.serving_default;
    expect(sig.method_name).toBe('tensorflow/serving/predict');
    const dims = (sizes: string[]): unknown => ({ dim: sizes.map((size) => ({ size, name: '' })), unknown_rank: false });
    expect(sig.inputs).toEqual({
      a: { dtype: 'DT_FLOAT', tensor_shape: dims(['-1', '4']), name: 'a' },
      b: { dtype: 'DT_FLOAT', tensor_shape: dims(['-1', '4']), name: 'b' },
    });
    expect(sig.outputs.argmax).toEqual({ dtype: 'DT_INT64', tensor_shape: dims(['-1']), name: 'argmax' });
    const mlp = await getJson(url('/v1/models/mlp/versions/1/metadata'));
    expect(mlp.json.metadata.signature_def.signature_def.serving_default.outputs.probs.tensor_shape).toEqual(dims(['-1', '10']));
    expect((await getJson(url('/v1/models/mlp/labels/stable/metadata'))).json.model_spec.version).toBe('1');
    expect((await getJson(url('/v1/models/cast/metadata'))).json.metadata.signature_def.signature_def.serving_default.inputs.x.dtype).toBe('DT_HALF');
  });

  it('predicts in row format (instances) for a single-input model', async () => {
    const rows = [[1.5, -2], [3, 4.25]];
    expect(await postJson(url('/v1/models/id-float32:predict'), { instances: rows })).toEqual({ status: 200, json: { predictions: rows } });
    const named = await postJson(url('/v1/models/id-float32:predict'), { instances: [{ x: [1, 2] }, { x: [3, 4] }] });
    expect(named).toEqual({ status: 200, json: { predictions: [[1, 2], [3, 4]] } });
  });

  it('predicts in columnar format (inputs) for a single-input model', async () => {
    expect(await postJson(url('/v1/models/id-int32:predict'), { inputs: [[7, -8, 9]] })).toEqual({ status: 200, json: { outputs: [[7, -8, 9]] } });
    expect(await postJson(url('/v1/models/id-int32:predict'), { inputs: { x: [[1]] } })).toEqual({ status: 200, json: { outputs: [[1]] } });
  });

  it('predicts multi-input, multi-output in row format: predictions are objects', async () => {
    const instances = MULTI_A.map((a, i) => ({ a, b: MULTI_B[i] }));
    const { status, json } = await postJson(url('/v1/models/multi:predict'), { instances });
    expect(status).toBe(200);
    expect(json.predictions).toEqual([
      { sum: [3, 5.5, 6, 1], product: [2, 2.5, 8, 0], argmax: 2 },
      { sum: [2, -1, 7, -2], product: [-3, -2, -30, -8], argmax: 2 },
    ]);
  });

  it('predicts multi-input, multi-output in columnar format: outputs is an object', async () => {
    const { status, json } = await postJson(url('/v1/models/multi:predict'), { inputs: { a: MULTI_A, b: MULTI_B } });
    expect(status).toBe(200);
    expect(json.outputs).toEqual({ sum: [[3, 5.5, 6, 1], [2, -1, 7, -2]], product: [[2, 2.5, 8, 0], [-3, -2, -30, -8]], argmax: [2, 2] });
  });

  it('accepts {"b64": ...} for the string model', async () => {
    const b64 = (s: string): { b64: string } => ({ b64: Buffer.from(s, 'utf8').toString('base64') });
    const row = await postJson(url('/v1/models/id-string:predict'), { instances: [[b64('hello'), b64('wörld')], [b64(''), 'plain']] });
    expect(row).toEqual({ status: 200, json: { predictions: [['hello', 'wörld'], ['', 'plain']] } });
    const col = await postJson(url('/v1/models/id-string:predict'), { inputs: { x: [[b64('a+b/c?')]] } });
    expect(col).toEqual({ status: 200, json: { outputs: [['a+b/c?']] } });
  });

  it.each(['/v1/models/mlp/versions/1:predict', '/v1/models/mlp/labels/stable:predict', '/v1/models/mlp:predict'])('POST %s', async (path) => {
    const { status, json } = await postJson(url(path), { instances: [mlpRow(1)] });
    expect(status).toBe(200);
    expect(json.predictions).toHaveLength(1);
    expect(json.predictions[0]).toHaveLength(10);
    expect((json.predictions[0] as number[]).reduce((s, p) => s + p, 0)).toBeCloseTo(1, 5);
  });
});

describe('Open Inference Protocol (KServe v2): server and model endpoints', () => {
  it('GET /v2 names the server and its extensions', async () => {
    const { status, json } = await getJson(url('/v2'));
    expect(status).toBe(200);
    expect(json).toMatchObject({ name: 'edgefleet', version: agentVersion() });
    expect(json.extensions).toContain('binary_tensor_data');
  });

  it('GET /v2/health/live and /v2/health/ready', async () => {
    expect(await getJson(url('/v2/health/live'))).toEqual({ status: 200, json: { live: true } });
    expect(await getJson(url('/v2/health/ready'))).toEqual({ status: 200, json: { ready: true } });
  });

  it.each(['/v2/models/multi', '/v2/models/multi/versions/1'])('GET %s gives metadata with -1 for dynamic dims', async (path) => {
    expect(await getJson(url(path))).toEqual({
      status: 200,
      json: {
        name: 'multi', versions: ['1'], platform: 'onnxruntime_onnx',
        inputs: [{ name: 'a', datatype: 'FP32', shape: [-1, 4] }, { name: 'b', datatype: 'FP32', shape: [-1, 4] }],
        outputs: [
          { name: 'sum', datatype: 'FP32', shape: [-1, 4] },
          { name: 'product', datatype: 'FP32', shape: [-1, 4] },
          { name: 'argmax', datatype: 'INT64', shape: [-1] },
        ],
      },
    });
  });

  it('metadata gives fixed dims and every datatype as the model declares it', async () => {
    expect((await getJson(url('/v2/models/static'))).json.inputs).toEqual([{ name: 'x', datatype: 'FP32', shape: [2, 3] }]);
    expect((await getJson(url('/v2/models/cast'))).json.outputs).toEqual([
      { name: 'y', datatype: 'FP32', shape: [-1, -1] },
      { name: 'z', datatype: 'FP16', shape: [-1, -1] },
    ]);
    for (const dt of DATATYPES) {
      expect((await getJson(url(`/v2/models/id-${ELEM[dt]}`))).json.inputs, dt).toEqual([{ name: 'x', datatype: dt, shape: [-1, -1] }]);
    }
  });

  it.each(['/v2/models/mlp/ready', '/v2/models/mlp/versions/1/ready'])('GET %s', async (path) => {
    expect(await getJson(url(path))).toEqual({ status: 200, json: { name: 'mlp', version: '1', ready: true } });
  });
});

describe('Open Inference Protocol (KServe v2): JSON infer', () => {
  it.each(DATATYPES)('%s round-trips through the identity model', async (dt) => {
    const body = { inputs: [tensor('x', dt, [2, 2], SAMPLES[dt])] };
    const { status, json } = await postJson(url(`/v2/models/id-${ELEM[dt]}/infer`), body);
    expect(status, JSON.stringify(json)).toBe(200);
    expect(json).toEqual({ model_name: `id-${ELEM[dt]}`, model_version: '1', outputs: [tensor('y', dt, [2, 2], SAMPLES[dt])] });
  });

  it('accepts nested as well as flat data, through an explicit version', async () => {
    const nested = await postJson(url('/v2/models/id-float32/versions/1/infer'), { inputs: [tensor('x', 'FP32', [2, 3], [[1, 2, 3], [4, 5, 6]])] });
    expect(nested.status).toBe(200);
    expect(nested.json.outputs).toEqual([tensor('y', 'FP32', [2, 3], [1, 2, 3, 4, 5, 6])]);
  });

  it('returns only the requested outputs, in the requested order, and echoes the id', async () => {
    const body = {
      id: 'req-42',
      inputs: [tensor('a', 'FP32', [2, 4], MULTI_A.flat()), tensor('b', 'FP32', [2, 4], MULTI_B.flat())],
      outputs: [{ name: 'argmax' }, { name: 'sum' }],
    };
    const { status, json } = await postJson(url('/v2/models/multi/infer'), body);
    expect(status).toBe(200);
    expect(json).toEqual({
      model_name: 'multi', model_version: '1', id: 'req-42',
      outputs: [tensor('argmax', 'INT64', [2], [2, 2]), tensor('sum', 'FP32', [2, 4], [3, 5.5, 6, 1, 2, -1, 7, -2])],
    });
  });

  it('converts FP16 to FP32 and back (mixed-type outputs)', async () => {
    const { status, json } = await postJson(url('/v2/models/cast/infer'), { inputs: [tensor('x', 'FP16', [1, 4], [0.5, -2, 65504, 0.0999755859375])] });
    expect(status).toBe(200);
    expect(json.outputs).toEqual([
      tensor('y', 'FP32', [1, 4], [0.5, -2, 65504, 0.0999755859375]),
      tensor('z', 'FP16', [1, 4], [0.5, -2, 65504, 0.0999755859375]),
    ]);
  });

  it.each(['FP32', 'FP64', 'FP16'] as const)('%s: "NaN" and "Infinity" strings go in and come back', async (dt) => {
    const data = ['NaN', 'Infinity', '-Infinity', 1];
    const { status, json } = await postJson(url(`/v2/models/id-${ELEM[dt]}/infer`), { inputs: [tensor('x', dt, [1, 4], data)] });
    expect(status).toBe(200);
    expect(json.outputs[0].data).toEqual(data);
  });

  it('v1 also takes and gives "NaN" and "Infinity"', async () => {
    const { status, json } = await postJson(url('/v1/models/id-float32:predict'), { instances: [['NaN', 'Infinity', '-Infinity']] });
    expect({ status, json }).toEqual({ status: 200, json: { predictions: [['NaN', 'Infinity', '-Infinity']] } });
  });

  it.each([1, 5])('serves the mlp with batch %i', async (batch) => {
    const rows = Array.from({ length: batch }, (_, k) => mlpRow(k));
    const { status, json } = await postJson(url('/v2/models/mlp/infer'), { inputs: [tensor('x', 'FP32', [batch, 784], rows.flat())] });
    expect(status).toBe(200);
    const [probs] = json.outputs as V2Output[];
    expect(probs).toMatchObject({ name: 'probs', datatype: 'FP32', shape: [batch, 10] });
    const data = probs?.data as number[];
    expect(data).toHaveLength(batch * 10);
    for (let k = 0; k < batch; k++) expect(data.slice(k * 10, k * 10 + 10).reduce((s, p) => s + p, 0)).toBeCloseTo(1, 5);
  });

  it.each([1, 7])('serves the identity with n = %i', async (n) => {
    const data = Array.from({ length: 2 * n }, (_, i) => i - n);
    const { status, json } = await postJson(url('/v2/models/id-int16/infer'), { inputs: [tensor('x', 'INT16', [2, n], data)] });
    expect(status).toBe(200);
    expect(json.outputs).toEqual([tensor('y', 'INT16', [2, n], data)]);
  });
});

describe('Open Inference Protocol (KServe v2): binary tensor extension', () => {
  const bin = (name: string, datatype: string, shape: number[], bytes: Buffer): Record<string, unknown> =>
    ({ name, datatype, shape, parameters: { binary_data_size: bytes.length } });

  it.each(DATATYPES)('%s: binary input and binary output carry the same little-endian bytes', async (dt) => {
    const bytes = le(dt, SAMPLES[dt]);
    const header = { inputs: [bin('x', dt, [2, 2], bytes)], outputs: [{ name: 'y', parameters: { binary_data: true } }] };
    const res = await postBinary(url(`/v2/models/id-${ELEM[dt]}/infer`), header, [bytes]);
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.contentType).toBe('application/octet-stream');
    expect(res.json.outputs).toEqual([{ name: 'y', datatype: dt, shape: [2, 2], parameters: { binary_data_size: bytes.length } }]);
    expect(res.binary.get('y')?.equals(bytes)).toBe(true);
  });

  it.each(DATATYPES)('%s: binary input gives the same JSON data back', async (dt) => {
    const bytes = le(dt, SAMPLES[dt]);
    const res = await postBinary(url(`/v2/models/id-${ELEM[dt]}/infer`), { inputs: [bin('x', dt, [2, 2], bytes)] }, [bytes]);
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(res.contentType).toBe('application/json');
    expect(res.json.outputs).toEqual([tensor('y', dt, [2, 2], SAMPLES[dt])]);
  });

  it('mixes binary and JSON inputs, and binary_data_output makes every output binary', async () => {
    const a = f32(...MULTI_A.flat());
    const header = {
      id: 'bin-1',
      parameters: { binary_data_output: true },
      inputs: [bin('a', 'FP32', [2, 4], a), tensor('b', 'FP32', [2, 4], MULTI_B.flat())],
    };
    const res = await postBinary(url('/v2/models/multi/infer'), header, [a]);
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ model_name: 'multi', model_version: '1', id: 'bin-1' });
    expect(res.json.outputs.map((o: V2Output) => [o.name, o.datatype, o.shape, o.parameters?.binary_data_size, o.data])).toEqual([
      ['sum', 'FP32', [2, 4], 32, undefined],
      ['product', 'FP32', [2, 4], 32, undefined],
      ['argmax', 'INT64', [2], 16, undefined],
    ]);
    expect(res.binary.get('sum')).toEqual(f32(3, 5.5, 6, 1, 2, -1, 7, -2));
    expect(res.binary.get('product')).toEqual(f32(2, 2.5, 8, 0, -3, -2, -30, -8));
    expect(res.binary.get('argmax')).toEqual(le('INT64', [2, 2]));
  });

  it('per-output binary_data overrides the default, both ways', async () => {
    const body = {
      parameters: { binary_data_output: true },
      inputs: [tensor('a', 'FP32', [2, 4], MULTI_A.flat()), tensor('b', 'FP32', [2, 4], MULTI_B.flat())],
      outputs: [{ name: 'product', parameters: { binary_data: false } }, { name: 'argmax' }],
    };
    const res = await parseV2(await fetch(url('/v2/models/multi/infer'), { method: 'POST', body: JSON.stringify(body) }));
    expect(res.status).toBe(200);
    expect(res.json.outputs).toEqual([
      tensor('product', 'FP32', [2, 4], [2, 2.5, 8, 0, -3, -2, -30, -8]),
      { name: 'argmax', datatype: 'INT64', shape: [2], parameters: { binary_data_size: 16 } },
    ]);
    expect(res.binary.get('argmax')).toEqual(le('INT64', [2, 2]));
  });

  it('BYTES binary elements are 4-byte little-endian length prefixed', async () => {
    const strings = ['ab', '', 'ünï'];
    const bytes = le('BYTES', strings);
    expect(bytes.subarray(0, 6)).toEqual(Buffer.from([2, 0, 0, 0, 0x61, 0x62]));
    const res = await postBinary(url('/v2/models/id-string/infer'), {
      inputs: [bin('x', 'BYTES', [1, 3], bytes)],
      outputs: [{ name: 'y', parameters: { binary_data: true } }],
    }, [bytes]);
    expect(res.status).toBe(200);
    expect(res.binary.get('y')).toEqual(bytes);
  });

  it('FP16 binary: half bits in, FP32 and FP16 bits out', async () => {
    const half = Buffer.from(new Uint16Array([0x3800, 0xc000, 0x7bff, 0x2e66]).buffer); // 0.5, -2, 65504, 0.0999755859375
    const res = await postBinary(url('/v2/models/cast/infer'), {
      parameters: { binary_data_output: true },
      inputs: [bin('x', 'FP16', [2, 2], half)],
    }, [half]);
    expect(res.status).toBe(200);
    expect(res.binary.get('z')).toEqual(half);
    expect(res.binary.get('y')).toEqual(f32(0.5, -2, 65504, 0.0999755859375));
  });
});

/**
 * BYTES travel as JS strings to ONNX Runtime, so some byte strings cannot survive.
 * Either outcome is acceptable; a 200 with different bytes is not.
 */
describe('BYTES that are not plain text are never silently altered', () => {
  function intactOr400(res: { status: number; json: any }, got: () => unknown, want: unknown): void {
    if (res.status === 200) expect(got(), 'a 200 must carry the bytes that were sent').toEqual(want);
    else expect([res.status, res.json.error]).toEqual([400, expect.stringContaining('"x"')]);
  }

  it('a NUL character in a JSON BYTES element', async () => {
    const data = ['a\u0000b', 'c'];
    const res = await postJson(url('/v2/models/id-string/infer'), { inputs: [tensor('x', 'BYTES', [1, 2], data)] });
    intactOr400(res, () => res.json.outputs[0].data, data);
  });

  it('non-UTF-8 bytes in a binary BYTES element', async () => {
    const bytes = Buffer.from([3, 0, 0, 0, 0xff, 0xfe, 0x80]);
    const header = { inputs: [{ name: 'x', datatype: 'BYTES', shape: [1, 1], parameters: { binary_data_size: 7 } }], outputs: [{ name: 'y', parameters: { binary_data: true } }] };
    const res = await postBinary(url('/v2/models/id-string/infer'), header, [bytes]);
    intactOr400(res, () => res.binary.get('y'), bytes);
  });
});

describe('GET /metrics', () => {
  it('serves Prometheus text with request, latency, load and warm-up metrics', async () => {
    const { status } = await postJson(url('/v2/models/mlp/infer'), { inputs: [tensor('x', 'FP32', [1, 784], mlpRow(3))] });
    expect(status).toBe(200);
    const res = await fetch(url('/metrics'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    for (const needle of [
      'edgefleet_requests_total{model="mlp",version="1",api="v2",code="200"}',
      'edgefleet_request_queue_seconds_bucket',
      'edgefleet_request_compute_seconds_bucket',
      'edgefleet_model_load_duration_seconds',
      'edgefleet_model_warmup_duration_seconds',
      'edgefleet_requests_in_flight',
    ]) {
      expect(text).toContain(needle);
    }
    const served = /^edgefleet_requests_total\{model="mlp",version="1",api="v2",code="200"\} (\d+)$/m.exec(text);
    expect(Number(served?.[1])).toBeGreaterThanOrEqual(1);
  });
});
