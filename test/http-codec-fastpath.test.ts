/**
 * The infer routes' fast paths against their definitions: parseV2Body must
 * answer exactly as parseV2Request of JSON.parse's result (values and error
 * messages), parseV1Request of the fast v1 reader's result exactly as of
 * JSON.parse's, and encodeV2ResponseParts exactly as the object-and-stringify
 * encoder it replaced.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import { EdgefleetError } from '../agent/errors.js';
import { parseV1Json, parseV2Json } from '../agent/codec/fast-json.js';
import { encodeJsonFlat, encodeJsonFlatText } from '../agent/codec/json-data.js';
import { parseV1Request } from '../agent/codec/v1.js';
import { encodeBinaryTensor, encodeV2ResponseParts, parseV2Body, parseV2Request } from '../agent/codec/v2.js';
import type { ModelIo, V2OutputSelection, V2ResponseMeta } from '../agent/codec/v2.js';
import { DATATYPES } from '../agent/runtime/tensor.js';
import type { Datatype, HostTensor, TensorData } from '../agent/runtime/tensor.js';
import { mulberry32 } from '../models/onnx/zoo.js';

const rand = mulberry32(99);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;

type Outcome = { ok: true; value: unknown } | { ok: false; code: string; message: string };

function outcome(fn: () => unknown): Outcome {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    if (!(err instanceof EdgefleetError)) throw err;
    return { ok: false, code: err.code, message: err.message };
  }
}

/** Values for a data array: mostly fitting the type, sometimes not. */
function element(dt: Datatype): unknown {
  const r = rand();
  if (r < 0.03) return pick(['NaN', 'Infinity', '-Infinity', 'x', null, true, [1], 1.5, -1, 2 ** 40, -0]);
  switch (dt) {
    case 'FP32': case 'FP64': case 'FP16':
      return pick([0, 1, -2.5, 0.1, 1e-7, 3.4e38, 1e300, 123456.789, Math.fround(0.3), rand() * 2 - 1, -0]);
    case 'BOOL': return pick([0, 1, true, false]);
    case 'BYTES': return pick(['a', 'ünï', '']);
    case 'INT64': case 'UINT64': return pick([0, 1, 9007199254740991, '123', -5]);
    case 'UINT8': case 'INT8': case 'UINT16': case 'INT16': case 'UINT32': case 'INT32':
      return Math.floor(rand() * 300) - 20;
  }
}

const SPEC_SHAPE = [-1, 3];

/** The slow path parseV2Body must match: JSON.parse of the header, then parseV2Request. */
function parseSlow(body: Buffer, headerLength: number | undefined, model: ModelIo): Outcome {
  const end = headerLength ?? body.length;
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8', 0, end));
  } catch (err) {
    return { ok: false, code: 'BAD_REQUEST', message: `malformed JSON: ${(err as Error).message}` };
  }
  return outcome(() => parseV2Request(json, model, headerLength === undefined ? undefined : body.subarray(end)));
}

describe('parseV2Body', () => {
  it('answers exactly as parseV2Request(JSON.parse(...)), every datatype, valid or not', () => {
    let fast = 0;
    const runs = 4000;
    for (let i = 0; i < runs; i++) {
      const dt = pick(DATATYPES);
      const model: ModelIo = { inputs: [{ name: 'x', datatype: dt, shape: SPEC_SHAPE }, { name: 'y', datatype: 'FP32', shape: [-1] }], outputs: [{ name: 'o', datatype: 'FP32', shape: [-1] }] };
      const rows = 1 + Math.floor(rand() * 3);
      const n = rand() < 0.9 ? rows * 3 : rows * 3 + 1;
      const xdata = Array.from({ length: n }, () => element(dt));
      const inputs: unknown[] = [
        { name: 'x', shape: [rows, 3], datatype: dt, data: rand() < 0.1 ? [xdata] : xdata },
        { name: 'y', shape: [2], datatype: 'FP32', data: [rand(), -1] },
      ];
      const body = { id: rand() < 0.5 ? 'r' : undefined, inputs: rand() < 0.5 ? inputs : inputs.reverse(), outputs: rand() < 0.3 ? [{ name: 'o' }] : undefined };
      const bytes = Buffer.from(JSON.stringify(body));
      if (parseV2Json(bytes, bytes.length) !== undefined) fast++;
      const expected = parseSlow(bytes, undefined, model);
      const actual = outcome(() => parseV2Body(bytes, undefined, model));
      expect(actual).toEqual(expected);
      if (expected.ok && actual.ok) {
        // Same typed array classes, not just equal contents.
        const e = expected.value as { inputs: HostTensor[] };
        const a = actual.value as { inputs: HostTensor[] };
        a.inputs.forEach((t, k) => expect(t.data.constructor).toBe(e.inputs[k]?.data.constructor));
      }
    }
    // Most bodies must really take the fast path (only non-ASCII strings send them to JSON.parse).
    expect(fast).toBeGreaterThan(runs * 0.6);
  });

  it('keeps results apart from the reader scratch, across requests and inputs', () => {
    const model: ModelIo = { inputs: [{ name: 'a', datatype: 'FP64', shape: [-1] }, { name: 'b', datatype: 'FP64', shape: [-1] }], outputs: [] };
    const first = parseV2Body(Buffer.from('{"inputs":[{"name":"a","shape":[2],"datatype":"FP64","data":[1,2]},{"name":"b","shape":[1],"datatype":"FP64","data":[3]}]}'), undefined, model);
    parseV2Body(Buffer.from('{"inputs":[{"name":"a","shape":[2],"datatype":"FP64","data":[7,8]},{"name":"b","shape":[1],"datatype":"FP64","data":[9]}]}'), undefined, model);
    expect(first.inputs.map((t) => [...t.data])).toEqual([[1, 2], [3]]);
    // Large data arrays grow the scratch mid-parse; earlier inputs stay intact.
    const big = Array.from({ length: 20000 }, (_, i) => i / 7);
    const r = parseV2Body(Buffer.from(JSON.stringify({ inputs: [{ name: 'a', shape: [3], datatype: 'FP64', data: [1, 2, 3] }, { name: 'b', shape: [20000], datatype: 'FP64', data: big }] })), undefined, model);
    expect([...r.inputs[0]!.data]).toEqual([1, 2, 3]);
    expect([...r.inputs[1]!.data]).toEqual(big);
  });

  it('reads the JSON header of a binary request the same way', () => {
    const model: ModelIo = { inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 2] }, { name: 'y', datatype: 'FP32', shape: [-1] }], outputs: [] };
    const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', shape: [1, 2], datatype: 'FP32', parameters: { binary_data_size: 8 } }, { name: 'y', shape: [1], datatype: 'FP32', data: [0.25] }] }));
    const body = Buffer.concat([header, Buffer.from(new Float32Array([1.5, -2]).buffer)]);
    for (const len of [header.length, header.length - 3]) {
      expect(outcome(() => parseV2Body(body, len, model))).toEqual(parseSlow(body, len, model));
    }
    expect(outcome(() => parseV2Body(body, String(header.length), model))).toEqual(parseSlow(body, header.length, model));
    // Lengths that are no byte count, or run past the body, are refused before any JSON is read.
    expect(outcome(() => parseV2Body(body, 'x', model))).toMatchObject({ ok: false, code: 'BAD_REQUEST', message: expect.stringContaining('is not a byte count') });
    expect(outcome(() => parseV2Body(body, body.length + 1, model))).toMatchObject({ ok: false, code: 'BAD_REQUEST', message: expect.stringContaining('is longer than') });
  });
});

describe('parseV1Request on the fast v1 reader', () => {
  /** A v1 value of rank `rank` with trailing dims `dims`, sometimes ragged or holding a stray value. */
  function tensor(dt: Datatype, dims: readonly number[]): unknown {
    if (dims.length === 0) return element(dt);
    const n = rand() < 0.05 ? (dims[0] as number) + 1 : (dims[0] as number);
    const rows = Array.from({ length: n }, () => tensor(dt, dims.slice(1)));
    if (rand() < 0.03) rows[0] = pick([[1, 2], 5, [[1]]]);
    return rows;
  }

  it('answers exactly as on JSON.parse, every datatype, row and columnar, valid or not', () => {
    let fast = 0;
    const runs = 4000;
    for (let i = 0; i < runs; i++) {
      const dt = pick(DATATYPES);
      const rank = 1 + Math.floor(rand() * 3);
      const dims = Array.from({ length: rank - 1 }, () => 1 + Math.floor(rand() * 3));
      const twoInputs = rand() < 0.4;
      const specs = twoInputs
        ? [{ name: 'x', datatype: dt, shape: [-1, ...dims] }, { name: 'y', datatype: 'FP32' as const, shape: [-1] }]
        : [{ name: 'x', datatype: dt, shape: [-1, ...dims] }];
      const batch = 1 + Math.floor(rand() * 3);
      let body: unknown;
      if (rand() < 0.5) {
        const instances = Array.from({ length: batch }, () => (twoInputs || rand() < 0.3 ? { x: tensor(dt, dims), ...(twoInputs && { y: element('FP32') }) } : tensor(dt, dims)));
        body = { instances, ...(rand() < 0.2 && { signature_name: 'serving_default' }) };
      } else {
        const x = tensor(dt, [batch, ...dims]);
        body = { inputs: twoInputs || rand() < 0.3 ? { x, ...(twoInputs && { y: tensor('FP32', [batch]) }) } : x };
      }
      const bytes = Buffer.from(JSON.stringify(body));
      const read = parseV1Json(bytes, bytes.length);
      if (read !== undefined) fast++;
      const expected = outcome(() => parseV1Request(JSON.parse(bytes.toString('utf8')), specs));
      const actual = outcome(() => parseV1Request(read ?? JSON.parse(bytes.toString('utf8')), specs));
      expect(actual).toEqual(expected);
      if (expected.ok && actual.ok) {
        const e = expected.value as { inputs: HostTensor[] };
        (actual.value as { inputs: HostTensor[] }).inputs.forEach((t, k) => expect(t.data.constructor).toBe(e.inputs[k]?.data.constructor));
      }
    }
    expect(fast).toBeGreaterThan(runs * 0.6);
  });

  it('copies out of the reader scratch', () => {
    const specs = [{ name: 'x', datatype: 'FP64' as const, shape: [-1, 2] }];
    const read = (text: string): unknown => parseV1Json(Buffer.from(text), Buffer.byteLength(text));
    const first = parseV1Request(read('{"instances":[[1,2],[3,4]]}'), specs);
    parseV1Request(read('{"instances":[[5,6],[7,8]]}'), specs);
    expect([...(first.inputs[0]?.data as Float64Array)]).toEqual([1, 2, 3, 4]);
  });
});

/** The outputs a response carries, in order, and whether each goes as binary. */
function selected(outputs: readonly HostTensor[], selection: V2OutputSelection): { tensor: HostTensor; binary: boolean }[] {
  return selection.outputs
    ? selection.outputs.map(({ name, binary }) => ({ tensor: outputs.find((t) => t.name === name) as HostTensor, binary }))
    : outputs.map((tensor) => ({ tensor, binary: selection.binaryOutput }));
}

/** The encoder encodeV2ResponseParts replaced, verbatim. */
function reference(meta: V2ResponseMeta, outputs: readonly HostTensor[], selection: V2OutputSelection): string {
  const entries = selected(outputs, selection).map(({ tensor: t, binary }) => {
    const head = { name: t.name, datatype: t.datatype, shape: [...t.shape] };
    if (!binary) return { ...head, data: encodeJsonFlat(t.datatype, t.data) };
    return { ...head, parameters: { binary_data_size: encodeBinaryTensor(t.datatype, t.data).length } };
  });
  return JSON.stringify({ model_name: meta.modelName, model_version: meta.modelVersion, ...(meta.id !== undefined && { id: meta.id }), outputs: entries });
}

function randomData(dt: Datatype, n: number): TensorData {
  const floats = (): number => pick([0, -0, 1.5, NaN, Infinity, -Infinity, 1e-45, 3.4e38, rand() * 100 - 50, Math.fround(rand())]);
  switch (dt) {
    case 'FP32': return Float32Array.from({ length: n }, floats);
    case 'FP64': return Float64Array.from({ length: n }, () => (rand() < 0.5 ? floats() : rand() * 1e300));
    case 'FP16': return Uint16Array.from({ length: n }, () => Math.floor(rand() * 65536));
    case 'BOOL': return Uint8Array.from({ length: n }, () => (rand() < 0.5 ? 1 : 0));
    case 'UINT8': return Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
    case 'INT8': return Int8Array.from({ length: n }, () => Math.floor(rand() * 256));
    case 'UINT16': return Uint16Array.from({ length: n }, () => Math.floor(rand() * 65536));
    case 'INT16': return Int16Array.from({ length: n }, () => Math.floor(rand() * 65536));
    case 'UINT32': return Uint32Array.from({ length: n }, () => Math.floor(rand() * 2 ** 32));
    case 'INT32': return Int32Array.from({ length: n }, () => Math.floor(rand() * 2 ** 32));
    case 'INT64': return BigInt64Array.from({ length: n }, () => BigInt(Math.floor(rand() * 2 ** 53)) * (rand() < 0.3 ? 1000n : 1n) * (rand() < 0.5 ? -1n : 1n));
    case 'UINT64': return BigUint64Array.from({ length: n }, () => BigInt(Math.floor(rand() * 2 ** 53)) * (rand() < 0.3 ? 1000n : 1n));
    case 'BYTES': return Array.from({ length: n }, () => pick(['', 'a"b', 'ünï', '\n\t\\', '\ud800', 'x']));
  }
}

describe('encodeV2ResponseParts', () => {
  it('writes exactly the JSON the object encoder wrote, and the binary outputs in order after it', () => {
    for (let i = 0; i < 3000; i++) {
      const outputs: HostTensor[] = Array.from({ length: 1 + Math.floor(rand() * 3) }, (_, k) => {
        const dt = pick(DATATYPES);
        const n = Math.floor(rand() * 5);
        return { name: pick(['o', 'ö"', `out${k}`]) + k, datatype: dt, shape: [1, n], data: randomData(dt, n) };
      });
      const binaryOutput = rand() < 0.3;
      const selection: V2OutputSelection = rand() < 0.5
        ? { outputs: undefined, binaryOutput }
        : { outputs: outputs.filter(() => rand() < 0.7).reverse().map((t) => ({ name: t.name, binary: rand() < 0.5 })), binaryOutput };
      const meta: V2ResponseMeta = { modelName: pick(['m', 'ünï "q"']), modelVersion: String(1 + Math.floor(rand() * 9)), ...(rand() < 0.5 && { id: pick(['r1', '\u2028', '']) }) };
      const parts = encodeV2ResponseParts(meta, outputs, selection);
      expect(parts.header).toBe(reference(meta, outputs, selection));
      const binary = selected(outputs, selection).filter((o) => o.binary);
      expect(parts.chunks).toEqual(binary.map(({ tensor: t }) => encodeBinaryTensor(t.datatype, t.data)));
    }
  });

  it('encodeJsonFlatText is JSON.stringify(encodeJsonFlat(...))', () => {
    for (let i = 0; i < 2000; i++) {
      const dt = pick(DATATYPES);
      const data = randomData(dt, Math.floor(rand() * 8));
      for (const b64 of [false, true]) expect(encodeJsonFlatText(dt, data, { b64 })).toBe(JSON.stringify(encodeJsonFlat(dt, data, { b64 })));
    }
  });
});
