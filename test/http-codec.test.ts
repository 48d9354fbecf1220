import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import { EdgefleetError } from '../agent/errors.js';
import type { ErrorCode } from '../agent/errors.js';
import { DATATYPES } from '../agent/runtime/tensor.js';
import type { Datatype, HostTensor, TensorSpec } from '../agent/runtime/tensor.js';
import { floatToHalf, halfArrayToFloat, halfToFloat } from '../agent/codec/fp16.js';
import { decodeBase64, decodeJson, encodeJsonFlat, encodeJsonNested } from '../agent/codec/json-data.js';
import { encodeV1Response, parseV1Request } from '../agent/codec/v1.js';
import {
  decodeBinaryTensor, encodeBinaryTensor, encodeV2ResponseParts, parseV2Body, parseV2Request,
} from '../agent/codec/v2.js';
import type { ModelIo, V2ResponseParts } from '../agent/codec/v2.js';
import { SAMPLES } from './helpers/tensor-samples.js';

/** Asserts fn throws an EdgefleetError with `code` whose message contains every fragment. */
function expectError(fn: () => unknown, code: ErrorCode, ...fragments: string[]): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'expected an error').toBeInstanceOf(EdgefleetError);
  const err = caught as EdgefleetError;
  expect(err.code, err.message).toBe(code);
  for (const f of fragments) expect(err.message).toContain(f);
}


const spec = (name: string, datatype: Datatype, shape: number[]): TensorSpec => ({ name, datatype, shape });

/** A v2 body: JSON header, then raw chunks, as Triton's client sends it. */
function binaryBody(header: unknown, chunks: Buffer[], pad = 0): { body: Buffer; headerLength: number } {
  const json = Buffer.from(JSON.stringify(header));
  // `pad` leading bytes shift the body's offset inside its ArrayBuffer, to test alignment.
  const whole = Buffer.concat([Buffer.alloc(pad), json, ...chunks]);
  return { body: whole.subarray(pad), headerLength: json.length };
}

/** Little-endian tensor bytes for JSON-ish values. */
function le(datatype: Datatype, values: unknown[]): Buffer {
  return encodeBinaryTensor(datatype, decodeJson(values, datatype, { input: 'x' }).data);
}

describe('fp16', () => {
  it.each([
    [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [0.5, 0x3800], [0.1, 0x2e66], [1 / 3, 0x3555],
    [65504, 0x7bff], [65519.99, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [Infinity, 0x7c00], [-Infinity, 0xfc00],
    [2 ** -14, 0x0400], [2 ** -24, 0x0001], [1023 * 2 ** -24, 0x03ff], [2 ** -25, 0x0000], [3 * 2 ** -26, 0x0001],
    [5 * 2 ** -26, 0x0001], [7 * 2 ** -26, 0x0002], [1e-10, 0x0000], [-1e-10, 0x8000], [Number.MIN_VALUE, 0],
    [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -11 + 2 ** -40, 0x3c01],
  ])('floatToHalf(%d) = %i with round-to-nearest-even', (x, bits) => {
    expect(floatToHalf(x)).toBe(bits);
  });

  it('rounds doubles once, not via float32 (no double rounding)', () => {
    const x = 1 + 2 ** -11 + 2 ** -30; // Math.fround makes this an exact tie that rounds down
    expect(floatToHalf(Math.fround(x))).toBe(0x3c00);
    expect(floatToHalf(x)).toBe(0x3c01);
  });

  it('encodes NaN as a quiet NaN and decodes NaN payloads as NaN', () => {
    expect(floatToHalf(NaN)).toBe(0x7e00);
    expect(halfToFloat(0x7e00)).toBeNaN();
    expect(halfToFloat(0x7c01)).toBeNaN();
    expect(halfToFloat(0xfe00)).toBeNaN();
    expect(halfToFloat(0x7c00)).toBe(Infinity);
    expect(halfToFloat(0xfc00)).toBe(-Infinity);
    expect(Object.is(halfToFloat(0x8000), -0)).toBe(true);
  });

  it('round-trips all 65536 half patterns exactly', () => {
    for (let h = 0; h < 0x10000; h++) {
      const f = halfToFloat(h);
      if (Number.isNaN(f)) continue;
      expect(Math.fround(f)).toBe(f); // every half is exact in float32
      if (floatToHalf(f) !== h) expect.fail(`half 0x${h.toString(16)} → ${f} → 0x${floatToHalf(f).toString(16)}`);
    }
  });

  it('decodes arrays, into a given output when passed', () => {
    const bits = Uint16Array.from([1, -2, Infinity, 2 ** -24], floatToHalf);
    expect([...bits]).toEqual([0x3c00, 0xc000, 0x7c00, 0x0001]);
    const out = new Float32Array(4);
    expect(halfArrayToFloat(bits, out)).toBe(out);
    expect([...out]).toEqual([1, -2, Infinity, 2 ** -24]);
  });
});

describe('JSON data', () => {
  it.each(DATATYPES)('%s round-trips flat and nested', (dt) => {
    const values = SAMPLES[dt];
    const flat = decodeJson(values, dt, { input: 'x' });
    expect(flat.shape).toEqual([4]);
    const nested = decodeJson([[values[0], values[1]], [values[2], values[3]]], dt, { input: 'x' });
    expect(nested.shape).toEqual([2, 2]);
    expect(nested.data).toEqual(flat.data);
    // Outputs: 64-bit integers come back as numbers when safe, else decimal strings.
    const expected = values.map((v) =>
      typeof v === 'string' && dt !== 'BYTES' && Number.isSafeInteger(Number(v)) ? Number(v) : v);
    expect(encodeJsonFlat(dt, flat.data)).toEqual(expected);
    expect(encodeJsonNested(dt, nested.data, [2, 2])).toEqual([expected.slice(0, 2), expected.slice(2)]);
  });

  it('stores each datatype in the array type onnxruntime-node expects', () => {
    const types: Record<Datatype, unknown> = {
      BOOL: Uint8Array, UINT8: Uint8Array, INT8: Int8Array, UINT16: Uint16Array, INT16: Int16Array,
      UINT32: Uint32Array, INT32: Int32Array, INT64: BigInt64Array, UINT64: BigUint64Array,
      FP16: Uint16Array, FP32: Float32Array, FP64: Float64Array, BYTES: Array,
    };
    for (const dt of DATATYPES) expect(decodeJson(SAMPLES[dt], dt, { input: 'x' }).data).toBeInstanceOf(types[dt]);
    expect([...decodeJson(SAMPLES.FP16, 'FP16', { input: 'x' }).data]).toEqual([0, 0xbe00, 0x7bff, 1]);
    expect([...decodeJson([true, 0, 1, false], 'BOOL', { input: 'x' }).data]).toEqual([1, 0, 1, 0]);
  });

  it('decodes scalars and empty arrays', () => {
    expect(decodeJson(2.5, 'FP32', { input: 'x' })).toEqual({ data: new Float32Array([2.5]), shape: [] });
    expect(decodeJson([[], []], 'INT32', { input: 'x' })).toEqual({ data: new Int32Array(0), shape: [2, 0] });
    expect(encodeJsonNested('FP32', new Float32Array([2.5]), [])).toBe(2.5);
    expect(encodeJsonNested('INT32', new Int32Array(0), [2, 0])).toEqual([[], []]);
  });

  it.each([
    [[[1, 2], [3]]], [[1, [2]]], [[[1], 2]], [[[[1, 2]], [[3, 4], [5, 6]]]], [[[1, 2], [3, [4]]]],
  ])('rejects ragged arrays: %j', (value) => {
    expectError(() => decodeJson(value, 'FP32', { input: 'img' }), 'BAD_REQUEST', 'input "img"', 'ragged');
  });

  it('names the element, value and type for out-of-range and non-integer values', () => {
    expectError(() => decodeJson([0, 1, 2, 3, 4, 300], 'INT8', { input: 'x' }), 'BAD_REQUEST',
      'input "x": element 5 is 300, out of range for INT8');
    expectError(() => decodeJson([-1], 'UINT8', { input: 'x' }), 'BAD_REQUEST', 'element 0 is -1, out of range for UINT8');
    expectError(() => decodeJson([70000], 'INT16', { input: 'x' }), 'BAD_REQUEST', 'out of range for INT16');
    expectError(() => decodeJson([2 ** 32], 'UINT32', { input: 'x' }), 'BAD_REQUEST', 'out of range for UINT32');
    expectError(() => decodeJson([2 ** 31], 'INT32', { input: 'x' }), 'BAD_REQUEST', 'out of range for INT32');
    expectError(() => decodeJson([1, 1.5], 'INT32', { input: 'x' }), 'BAD_REQUEST', 'input "x": element 1 is 1.5, not an integer');
    expectError(() => decodeJson(['7'], 'INT32', { input: 'x' }), 'BAD_REQUEST', 'input "x": element 0 is "7"');
    expectError(() => decodeJson([true], 'INT32', { input: 'x' }), 'BAD_REQUEST', 'input "x": element 0 is true');
    expectError(() => decodeJson([null], 'FP32', { input: 'x' }), 'BAD_REQUEST', 'input "x": element 0 is null');
    expectError(() => decodeJson([{ a: 1 }], 'FP64', { input: 'x' }), 'BAD_REQUEST', 'input "x"', 'expected a number');
    expectError(() => decodeJson([2], 'BOOL', { input: 'x' }), 'BAD_REQUEST', 'input "x": element 0 is 2', 'BOOL');
    expectError(() => decodeJson(['true'], 'BOOL', { input: 'x' }), 'BAD_REQUEST', 'input "x"');
    expectError(() => decodeJson([3], 'BYTES', { input: 'x' }), 'BAD_REQUEST', 'input "x": element 0 is 3');
  });

  it('accepts 64-bit integers as safe numbers or decimal strings only', () => {
    const big = decodeJson(['-9223372036854775808', 42, '9223372036854775807'], 'INT64', { input: 'id' });
    expect([...big.data]).toEqual([-(2n ** 63n), 42n, 2n ** 63n - 1n]);
    expectError(() => decodeJson([2 ** 60], 'INT64', { input: 'id' }), 'BAD_REQUEST', 'input "id"', 'decimal strings');
    expectError(() => decodeJson(['9223372036854775808'], 'INT64', { input: 'id' }), 'BAD_REQUEST', 'input "id"', 'out of range for INT64');
    expectError(() => decodeJson(['18446744073709551616'], 'UINT64', { input: 'id' }), 'BAD_REQUEST', 'out of range for UINT64');
    expectError(() => decodeJson([-1], 'UINT64', { input: 'id' }), 'BAD_REQUEST', 'input "id"', 'out of range for UINT64');
    expectError(() => decodeJson(['1e3'], 'INT64', { input: 'id' }), 'BAD_REQUEST', 'input "id"');
    expectError(() => decodeJson([1.5], 'INT64', { input: 'id' }), 'BAD_REQUEST', 'input "id"');
    expect(encodeJsonFlat('UINT64', new BigUint64Array([2n ** 53n - 1n, 2n ** 53n]))).toEqual([9007199254740991, '9007199254740992']);
  });

  it('NaN policy: "NaN"/"Infinity"/"-Infinity" strings in and out for float types', () => {
    for (const dt of ['FP16', 'FP32', 'FP64'] as const) {
      const { data } = decodeJson(['NaN', 'Infinity', '-Infinity', 1], dt, { input: 'f' });
      const out = encodeJsonFlat(dt, data);
      expect(out).toEqual(['NaN', 'Infinity', '-Infinity', 1]);
      expect(JSON.parse(JSON.stringify(out))).toEqual(out); // stays valid JSON, no nulls
      expectError(() => decodeJson(['nan'], dt, { input: 'f' }), 'BAD_REQUEST', 'input "f": element 0 is "nan"');
      expectError(() => decodeJson(['1.5'], dt, { input: 'f' }), 'BAD_REQUEST', 'input "f"');
    }
    expectError(() => decodeJson(['NaN'], 'INT32', { input: 'i' }), 'BAD_REQUEST', 'input "i"');
  });

  it('decodes {"b64"} objects only when allowed, strictly', () => {
    const b64 = Buffer.from('héllo').toString('base64');
    expect(decodeJson([{ b64 }, 'plain'], 'BYTES', { input: 's', b64: true }).data).toEqual(['héllo', 'plain']);
    expect(decodeJson({ b64: 'aGk' }, 'BYTES', { input: 's', b64: true }).data).toEqual(['hi']); // unpadded
    expectError(() => decodeJson([{ b64 }], 'BYTES', { input: 's' }), 'BAD_REQUEST', 'input "s"', 'expected a string');
    for (const bad of ['a', 'ab$d', 'aGk=x', 'aG k=', 'aGk==', '====', 'aGVsbG8-']) {
      expectError(() => decodeJson([{ b64: bad }], 'BYTES', { input: 's', b64: true }), 'BAD_REQUEST', 'input "s"', 'invalid base64');
    }
    expect(decodeBase64('', 's').length).toBe(0);
    expect(encodeJsonFlat('BYTES', ['hi'], { b64: true })).toEqual([{ b64: 'aGk=' }]);
  });

  it('checks the element count against an expected shape', () => {
    expectError(() => decodeJson([1, 2, 3], 'FP32', { input: 'x', expectedShape: [2, 2] }), 'BAD_REQUEST',
      'input "x": data has 3 elements, but shape [2,2] needs 4');
    expect(decodeJson([[1, 2], [3, 4]], 'FP32', { input: 'x', expectedShape: [4] }).shape).toEqual([2, 2]);
  });

  it('decodes a 784-float request quickly', () => {
    const pixels = Array.from({ length: 784 }, (_, i) => i / 784);
    const body = JSON.parse(JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', data: pixels }] }));
    const model: ModelIo = { inputs: [spec('x', 'FP32', [-1, 784])], outputs: [spec('y', 'FP32', [-1, 10])] };
    for (let i = 0; i < 200; i++) parseV2Request(body, model); // warm up
    const t0 = performance.now();
    const n = 2000;
    for (let i = 0; i < n; i++) parseV2Request(body, model);
    expect((performance.now() - t0) / n).toBeLessThan(0.5); // ms; typically a few µs
  });
});

const IMG: ModelIo = {
  inputs: [spec('img', 'FP32', [-1, 3, 2, 2]), spec('mask', 'BOOL', [-1, 4])],
  outputs: [spec('scores', 'FP32', [-1, 2]), spec('label', 'BYTES', [-1]), spec('ids', 'INT64', [-1])],
};
const IMG_DATA = Array.from({ length: 12 }, (_, i) => i / 2);
const validInputs = (): Record<string, unknown>[] => [
  { name: 'img', shape: [1, 3, 2, 2], datatype: 'FP32', data: IMG_DATA },
  { name: 'mask', shape: [1, 4], datatype: 'BOOL', data: [[true, false, true, false]] },
];
const OUTPUTS: HostTensor[] = [
  { name: 'scores', datatype: 'FP32', shape: [1, 2], data: new Float32Array([0.5, NaN]) },
  { name: 'label', datatype: 'BYTES', shape: [1], data: ['cat'] },
  { name: 'ids', datatype: 'INT64', shape: [1], data: new BigInt64Array([2n ** 60n]) },
];

describe('v2 JSON requests', () => {
  it.each(DATATYPES)('%s: request data → tensor → response data', (dt) => {
    const model: ModelIo = { inputs: [spec('x', dt, [-1, 2])], outputs: [spec('x', dt, [-1, 2])] };
    const req = parseV2Request({ id: 'r1', inputs: [{ name: 'x', shape: [2, 2], datatype: dt, data: SAMPLES[dt] }] }, model);
    expect(req.id).toBe('r1');
    const [x] = req.inputs;
    expect(x).toMatchObject({ name: 'x', datatype: dt, shape: [2, 2] });
    const res = encodeV2ResponseParts({ modelName: 'm', modelVersion: '3', id: 'r1' }, req.inputs, req);
    expect(res.chunks).toEqual([]); // the header is the whole (JSON) body
    const json = JSON.parse(res.header);
    expect(json).toMatchObject({ model_name: 'm', model_version: '3', id: 'r1' });
    expect(json.outputs[0]).toEqual({
      name: 'x', datatype: dt, shape: [2, 2], data: encodeJsonFlat(dt, decodeJson(SAMPLES[dt], dt, { input: 'x' }).data),
    });
  });

  it('accepts flat or nested data, and returns inputs in model order', () => {
    const req = parseV2Request({ inputs: validInputs().reverse() }, IMG);
    expect(req.inputs.map((t) => t.name)).toEqual(['img', 'mask']);
    expect(req.inputs[0]?.data).toEqual(new Float32Array(IMG_DATA));
    expect(req.inputs[1]?.data).toEqual(new Uint8Array([1, 0, 1, 0]));
    expect(req.outputs).toBeUndefined();
    expect(req.binaryOutput).toBe(false);
  });

  const withInput = (patch: Record<string, unknown>, k = 0): unknown => {
    const inputs = validInputs();
    inputs[k] = { ...inputs[k], ...patch };
    return { inputs };
  };

  it.each<[string, unknown, ErrorCode, string[]]>([
    ['missing input', { inputs: validInputs().slice(0, 1) }, 'BAD_REQUEST', ['missing input "mask"']],
    ['unknown input', { inputs: [...validInputs(), { name: 'extra', shape: [1], datatype: 'FP32', data: [1] }] },
      'BAD_REQUEST', ['unknown input "extra"', '"img", "mask"']],
    ['duplicate input', { inputs: [...validInputs(), validInputs()[0]] }, 'BAD_REQUEST', ['input "img" appears more than once']],
    ['datatype mismatch', withInput({ datatype: 'FP64' }), 'BAD_REQUEST',
      ['input "img": datatype FP64 does not match the model\'s FP32']],
    ['unknown datatype', withInput({ datatype: 'FLOAT32' }), 'BAD_REQUEST', ['input "img": unknown datatype "FLOAT32"']],
    ['BF16', withInput({ datatype: 'BF16' }), 'UNSUPPORTED', ['input "img"', 'BF16']],
    ['rank mismatch', withInput({ shape: [3, 2, 2] }), 'BAD_REQUEST', ['input "img"', 'rank 3', 'rank 4']],
    ['fixed dim mismatch', withInput({ shape: [1, 4, 3, 1] }), 'BAD_REQUEST', ['input "img"', 'dimension 1', 'expects 3']],
    ['bad shape', withInput({ shape: [1, -3, 2, 2] }), 'BAD_REQUEST', ['input "img"', '"shape"']],
    ['count ≠ shape', withInput({ data: IMG_DATA.slice(1) }), 'BAD_REQUEST', ['input "img": data has 11 elements', 'needs 12']],
    ['data not an array', withInput({ data: 5 }), 'BAD_REQUEST', ['input "img": "data" must be an array']],
    ['no data', withInput({ data: undefined }), 'BAD_REQUEST', ['input "img": has neither']],
    ['ragged', withInput({ data: [[true, false], [true]] }, 1), 'BAD_REQUEST', ['input "mask"', 'ragged']],
    ['bad element', withInput({ data: [1, 0, 2, 0] }, 1), 'BAD_REQUEST', ['input "mask": element 2 is 2']],
    ['shared memory', withInput({ parameters: { shared_memory_region: 'r' } }), 'UNSUPPORTED', ['input "img"']],
    ['unknown output', { inputs: validInputs(), outputs: [{ name: 'nope' }] }, 'BAD_REQUEST', ['unknown output "nope"', '"scores"']],
    ['duplicate output', { inputs: validInputs(), outputs: [{ name: 'ids' }, { name: 'ids' }] }, 'BAD_REQUEST', ['output "ids"']],
    ['classification', { inputs: validInputs(), outputs: [{ name: 'ids', parameters: { classification: 3 } }] },
      'UNSUPPORTED', ['output "ids"', 'classification']],
    ['no inputs', { inputs: [] }, 'BAD_REQUEST', ['"inputs"']],
    ['nameless input', { inputs: [{ shape: [1] }] }, 'BAD_REQUEST', ['inputs[0]']],
    ['bad id', { id: 5, inputs: validInputs() }, 'BAD_REQUEST', ['"id"']],
  ])('rejects %s', (_, body, code, fragments) => {
    expectError(() => parseV2Request(body, IMG), code, ...fragments);
  });

  it('rejects malformed JSON bodies with a 400', () => {
    expectError(() => parseV2Body(Buffer.from('{"inputs": ['), undefined, IMG), 'BAD_REQUEST', 'malformed JSON');
    expectError(() => parseV2Request([1], IMG), 'BAD_REQUEST', 'JSON object');
  });

  it('takes "inputs": [] only for a model without inputs (a constant), and refuses it for one with inputs', () => {
    const constant: ModelIo = { inputs: [], outputs: [spec('values', 'FP32', [2])] };
    expect(parseV2Request({ inputs: [] }, constant).inputs).toEqual([]);
    expectError(() => parseV2Request({ inputs: [] }, IMG), 'BAD_REQUEST', '"inputs" must be a non-empty array');
    expectError(() => parseV2Request({}, constant), 'BAD_REQUEST', '"inputs" must be a non-empty array');
  });
});

describe('v2 binary tensors', () => {
  const cases: [Datatype, unknown[]][] = DATATYPES.map((dt) => [dt, SAMPLES[dt]]);

  it.each(cases)('%s round-trips through the binary extension', (dt, values) => {
    const model: ModelIo = { inputs: [spec('x', dt, [4])], outputs: [spec('x', dt, [4])] };
    const raw = encodeBinaryTensor(dt, decodeJson(values, dt, { input: 'x' }).data);
    for (const pad of [0, 1, 3]) {
      const header = { inputs: [{ name: 'x', shape: [4], datatype: dt, parameters: { binary_data_size: raw.length } }],
        outputs: [{ name: 'x', parameters: { binary_data: true } }] };
      const { body, headerLength } = binaryBody(header, [raw], pad);
      const req = parseV2Body(body, String(headerLength), model);
      expect(req.inputs[0]?.data).toEqual(decodeJson(values, dt, { input: 'x' }).data);
      const res = encodeV2ResponseParts({ modelName: 'm', modelVersion: '1' }, req.inputs, req);
      expect(res.chunks).toHaveLength(1); // binary bytes follow the header
      const head = JSON.parse(res.header);
      expect(head.outputs[0]).toEqual({ name: 'x', datatype: dt, shape: [4], parameters: { binary_data_size: raw.length } });
      expect(head.outputs[0].data).toBeUndefined();
      expect(res.chunks[0]).toEqual(raw);
    }
  });

  it('makes aligned tensors zero-copy views over the body and copies misaligned ones once', () => {
    const values = Array.from({ length: 3 * 48 * 320 }, (_, i) => i);
    const raw = le('FP32', values);
    const header = { inputs: [{ name: 'x', shape: [1, 3, 48, 320], datatype: 'FP32', parameters: { binary_data_size: raw.length } }] };
    const model: ModelIo = { inputs: [spec('x', 'FP32', [1, 3, 48, -1])], outputs: [] };
    const json = Buffer.from(JSON.stringify(header));
    // Pad the header with spaces so the tensor starts at a multiple of 4.
    const pad = (4 - (json.length % 4)) % 4;
    const aligned = Buffer.concat([json, Buffer.alloc(pad, ' '), raw]);
    expect(aligned.byteOffset).toBe(0); // large bodies own their ArrayBuffer
    const view = parseV2Body(aligned, aligned.length - raw.length, model).inputs[0]?.data as Float32Array;
    expect(view.buffer).toBe(aligned.buffer);
    expect(view.byteOffset).toBe(json.length + pad);
    expect(view[1000]).toBe(1000);
    const shifted = Buffer.concat([json, Buffer.alloc(pad + 1, ' '), raw]);
    const data = parseV2Body(shifted, shifted.length - raw.length, model).inputs[0]?.data as Float32Array;
    expect(data.buffer).not.toBe(shifted.buffer);
    expect(data).toEqual(new Float32Array(values));
  });

  it('mixes JSON and binary inputs, slicing binary ones in input order', () => {
    const model: ModelIo = {
      inputs: [spec('a', 'INT32', [2]), spec('b', 'FP64', [1]), spec('c', 'BYTES', [2])],
      outputs: [],
    };
    const bytes = encodeBinaryTensor('BYTES', ['', 'zwölf']);
    const { body, headerLength } = binaryBody({
      inputs: [
        { name: 'c', shape: [2], datatype: 'BYTES', parameters: { binary_data_size: bytes.length } },
        { name: 'b', shape: [1], datatype: 'FP64', data: [2.5] },
        { name: 'a', shape: [2], datatype: 'INT32', parameters: { binary_data_size: 8 } },
      ],
    }, [bytes, le('INT32', [7, -7])]);
    const req = parseV2Body(body, headerLength, model);
    expect(req.inputs.map((t) => [...t.data])).toEqual([[7, -7], [2.5], ['', 'zwölf']]);
    expect([...bytes]).toEqual([0, 0, 0, 0, 6, 0, 0, 0, ...Buffer.from('zwölf')]);
  });

  const oneInput = (size: number, extra: Record<string, unknown> = {}): unknown => ({
    inputs: [{ name: 'x', shape: [2], datatype: 'FP32', parameters: { binary_data_size: size }, ...extra }],
  });
  const X: ModelIo = { inputs: [spec('x', 'FP32', [2])], outputs: [] };

  it('rejects header lengths that lie', () => {
    const { body, headerLength } = binaryBody(oneInput(8), [le('FP32', [1, 2])]);
    expectError(() => parseV2Body(body, body.length + 1, X), 'BAD_REQUEST', 'Inference-Header-Content-Length', 'longer than');
    expectError(() => parseV2Body(body, 'abc', X), 'BAD_REQUEST', 'Inference-Header-Content-Length');
    expectError(() => parseV2Body(body, -1, X), 'BAD_REQUEST', 'Inference-Header-Content-Length');
    expectError(() => parseV2Body(body, headerLength - 1, X), 'BAD_REQUEST', 'malformed JSON');
  });

  it('rejects binary sizes that do not add up', () => {
    const run = (header: unknown, chunks: Buffer[], model = X): unknown => {
      const { body, headerLength } = binaryBody(header, chunks);
      return parseV2Body(body, headerLength, model);
    };
    const two = le('FP32', [1, 2]);
    expectError(() => run(oneInput(8), [two, Buffer.alloc(4)]), 'BAD_REQUEST', 'input "x"', 'adds up to 8', '12 bytes follow');
    expectError(() => run(oneInput(12), [two]), 'BAD_REQUEST', 'input "x": binary_data_size 12 exceeds the 8 bytes');
    expectError(() => run(oneInput(6), [two.subarray(0, 6)]), 'BAD_REQUEST', 'input "x": binary_data_size 6 does not match 2 FP32');
    expectError(() => run({ inputs: [{ name: 'x', shape: [2], datatype: 'FP32', data: [1, 2] }] }, [two]),
      'BAD_REQUEST', 'no input sets parameters.binary_data_size', '8 bytes follow');
    expectError(() => run(oneInput(8, { data: [1, 2] }), [two]), 'BAD_REQUEST', 'input "x": has both');
    expectError(() => run(oneInput(-8), [two]), 'BAD_REQUEST', 'input "x": binary_data_size -8');
    expectError(() => parseV2Request(oneInput(8), X), 'BAD_REQUEST', 'input "x"', 'no binary');
  });

  it('rejects malformed BYTES and BOOL binary data', () => {
    const framed = encodeBinaryTensor('BYTES', ['ab', 'c']);
    expect(decodeBinaryTensor(framed, 'BYTES', 2, 's')).toEqual(['ab', 'c']);
    expectError(() => decodeBinaryTensor(framed.subarray(0, 5), 'BYTES', 1, 's'), 'BAD_REQUEST',
      'input "s": BYTES element 0 claims 2 bytes, only 1 remain');
    expectError(() => decodeBinaryTensor(framed.subarray(0, 10), 'BYTES', 2, 's'), 'BAD_REQUEST',
      'input "s": BYTES element 1 claims 1 bytes, only 0 remain');
    expectError(() => decodeBinaryTensor(framed.subarray(0, 8), 'BYTES', 2, 's'), 'BAD_REQUEST',
      'input "s": BYTES element 1\'s 4-byte length');
    expectError(() => decodeBinaryTensor(framed, 'BYTES', 1, 's'), 'BAD_REQUEST', 'input "s": 5 bytes left over');
    expectError(() => decodeBinaryTensor(Buffer.from([0, 1, 2]), 'BOOL', 3, 'm'), 'BAD_REQUEST', 'input "m": BOOL element 2 is byte 2');
    expectError(() => decodeBinaryTensor(Buffer.alloc(12), 'INT64', 2, 'n'), 'BAD_REQUEST', 'input "n"', 'does not match 2 INT64');
  });
});

describe('v2 responses', () => {
  const decode = (res: V2ResponseParts): { head: Record<string, unknown> & { outputs: Record<string, unknown>[] }; rest: Buffer } => ({
    head: JSON.parse(res.header),
    rest: Buffer.concat(res.chunks),
  });
  const meta = { modelName: 'img', modelVersion: '7' };

  it('writes JSON outputs: NaN as a string, unsafe INT64 as a string', () => {
    const req = parseV2Request({ inputs: validInputs() }, IMG);
    const res = encodeV2ResponseParts(meta, OUTPUTS, req);
    expect(res.chunks).toEqual([]);
    expect(decode(res).head).toEqual({
      model_name: 'img', model_version: '7',
      outputs: [
        { name: 'scores', datatype: 'FP32', shape: [1, 2], data: [0.5, 'NaN'] },
        { name: 'label', datatype: 'BYTES', shape: [1], data: ['cat'] },
        { name: 'ids', datatype: 'INT64', shape: [1], data: ['1152921504606846976'] },
      ],
    });
  });

  it('writes only requested outputs, in requested order, binary where asked', () => {
    const req = parseV2Request({
      id: 'abc',
      inputs: validInputs(),
      outputs: [{ name: 'label', parameters: { binary_data: true } }, { name: 'scores' }],
    }, IMG);
    expect(req.outputs).toEqual([{ name: 'label', binary: true }, { name: 'scores', binary: false }]);
    const res = encodeV2ResponseParts({ ...meta, id: 'abc' }, OUTPUTS, req);
    const { head, rest } = decode(res);
    expect(res.chunks).toHaveLength(1); // only "label" is binary
    expect(head.id).toBe('abc');
    expect(head.outputs).toEqual([
      { name: 'label', datatype: 'BYTES', shape: [1], parameters: { binary_data_size: 7 } },
      { name: 'scores', datatype: 'FP32', shape: [1, 2], data: [0.5, 'NaN'] },
    ]);
    expect(decodeBinaryTensor(rest, 'BYTES', 1, 'label')).toEqual(['cat']);
  });

  it('binary_data_output makes every output binary unless one opts out', () => {
    const all = parseV2Request({ inputs: validInputs(), parameters: { binary_data_output: true } }, IMG);
    const { head, rest } = decode(encodeV2ResponseParts(meta, OUTPUTS, all));
    expect(head.outputs.map((o) => o.parameters)).toEqual([
      { binary_data_size: 8 }, { binary_data_size: 7 }, { binary_data_size: 8 },
    ]);
    expect(new Float32Array(rest.buffer.slice(rest.byteOffset, rest.byteOffset + 8))[0]).toBe(0.5);
    expect(rest.readBigInt64LE(15)).toBe(2n ** 60n);
    const optOut = parseV2Request({
      inputs: validInputs(), parameters: { binary_data_output: true },
      outputs: [{ name: 'ids', parameters: { binary_data: false } }, { name: 'scores' }],
    }, IMG);
    const res = decode(encodeV2ResponseParts(meta, OUTPUTS, optOut));
    expect(res.head.outputs[0]).toEqual({ name: 'ids', datatype: 'INT64', shape: [1], data: ['1152921504606846976'] });
    expect(res.head.outputs[1]?.parameters).toEqual({ binary_data_size: 8 });
  });

  it('reports a requested output the runtime did not produce as internal', () => {
    const req = parseV2Request({ inputs: validInputs(), outputs: [{ name: 'ids' }] }, IMG);
    expectError(() => encodeV2ResponseParts(meta, OUTPUTS.slice(0, 1), req), 'INTERNAL', 'output "ids"');
  });
});

describe('v1 (TensorFlow Serving REST)', () => {
  const ONE: TensorSpec[] = [spec('x', 'FP32', [-1, 2, 2])];
  const TWO: TensorSpec[] = [spec('tokens', 'INT64', [-1, 3]), spec('text', 'BYTES', [-1])];

  it('row format, single input: instances stack along a new batch dimension', () => {
    const req = parseV1Request({ signature_name: 'serving_default', instances: [[[1, 2], [3, 4]], [[5, 6], [7, 8]]] }, ONE);
    expect(req.format).toBe('row');
    expect(req.signatureName).toBe('serving_default');
    expect(req.inputs).toEqual([{ name: 'x', datatype: 'FP32', shape: [2, 2, 2], data: new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]) }]);
    // Named instances work for a single input too.
    expect(parseV1Request({ instances: [{ x: [[1, 2], [3, 4]] }] }, ONE).inputs[0]?.shape).toEqual([1, 2, 2]);
  });

  it('row format, multiple inputs: objects keyed by input name, b64 for bytes', () => {
    const req = parseV1Request({
      instances: [
        { tokens: [1, 2, '9223372036854775807'], text: { b64: Buffer.from('héllo').toString('base64') } },
        { tokens: [4, 5, 6], text: 'plain' },
      ],
    }, TWO);
    expect(req.inputs).toEqual([
      { name: 'tokens', datatype: 'INT64', shape: [2, 3], data: new BigInt64Array([1n, 2n, 2n ** 63n - 1n, 4n, 5n, 6n]) },
      { name: 'text', datatype: 'BYTES', shape: [2], data: ['héllo', 'plain'] },
    ]);
  });

  it('columnar format: a bare value for one input, an object for several; no stacking', () => {
    const one = parseV1Request({ inputs: [[[1, 2], [3, 4]]] }, ONE);
    expect(one.format).toBe('columnar');
    expect(one.inputs[0]?.shape).toEqual([1, 2, 2]);
    const two = parseV1Request({ inputs: { text: ['a', { b64: 'Yg==' }], tokens: [[1, 2, 3], [4, 5, 6]] } }, TWO);
    expect(two.inputs.map((t) => t.shape)).toEqual([[2, 3], [2]]);
    expect(two.inputs[1]?.data).toEqual(['a', 'b']);
    const scalar = parseV1Request({ inputs: { b64: 'aGk=' } }, [spec('s', 'BYTES', [])]);
    expect(scalar.inputs[0]).toEqual({ name: 's', datatype: 'BYTES', shape: [], data: ['hi'] });
  });

  it.each<[string, unknown, TensorSpec[], string[]]>([
    ['both formats', { instances: [1], inputs: [1] }, ONE, ['"instances"', '"inputs"']],
    ['neither format', { signature_name: 'x' }, ONE, ['"instances"', '"inputs"']],
    ['empty instances', { instances: [] }, ONE, ['"instances"']],
    ['ragged instances', { instances: [[[1, 2], [3, 4]], [[5, 6]]] }, ONE, ['input "x"', 'ragged']],
    ['wrong shape', { instances: [[1, 2, 3, 4]] }, ONE, ['input "x"', 'rank 2', 'rank 3']],
    ['wrong fixed dim', { instances: [[[1, 2, 3], [4, 5, 6]]] }, ONE, ['input "x"', 'dimension 2']],
    ['wrong type', { instances: [[['a', 2], [3, 4]]] }, ONE, ['input "x": element 0 is "a"']],
    ['bare values, two inputs', { instances: [[1, 2, 3]] }, TWO, ['instance 0', '"tokens", "text"']],
    ['unknown key', { instances: [{ tokens: [1, 2, 3], text: 'a', extra: 1 }] }, TWO, ['unknown input "extra"', 'instance 0']],
    ['missing key', { instances: [{ tokens: [1, 2, 3], text: 'a' }, { tokens: [1, 2, 3] }] }, TWO, ['input "text" is missing from instance 1']],
    ['columnar missing', { inputs: { tokens: [[1, 2, 3]] } }, TWO, ['input "text" is missing']],
    ['columnar bare, two inputs', { inputs: [1] }, TWO, ['"inputs"', '"tokens", "text"']],
    ['bad b64', { inputs: { tokens: [[1, 2, 3]], text: [{ b64: 'no!' }] } }, TWO, ['input "text"', 'invalid base64']],
    ['b64 for a number', { instances: [{ tokens: [{ b64: 'AA==' }, 2, 3], text: 'a' }] }, TWO, ['input "tokens": element 0']],
    ['out of range', { instances: [{ tokens: [1, 2, '99999999999999999999'], text: 'a' }] }, TWO, ['input "tokens"', 'out of range for INT64']],
    ['not an object', [1], ONE, ['JSON object']],
  ])('rejects %s', (_, body, specs, fragments) => {
    expectError(() => parseV1Request(body, specs), 'BAD_REQUEST', ...fragments);
  });

  const scores: HostTensor = { name: 'scores', datatype: 'FP32', shape: [2, 2], data: new Float32Array([0.25, -Infinity, 1, NaN]) };
  const label: HostTensor = { name: 'label', datatype: 'BYTES', shape: [2], data: ['cat', 'dog'] };
  const raw: HostTensor = { name: 'image_bytes', datatype: 'BYTES', shape: [2], data: ['ab', 'c'] };

  it('row responses: per-instance values for one output, objects for several', () => {
    expect(encodeV1Response('row', [scores])).toEqual({ predictions: [[0.25, '-Infinity'], [1, 'NaN']] });
    expect(encodeV1Response('row', [scores, label, raw])).toEqual({
      predictions: [
        { scores: [0.25, '-Infinity'], label: 'cat', image_bytes: { b64: 'YWI=' } },
        { scores: [1, 'NaN'], label: 'dog', image_bytes: { b64: 'Yw==' } },
      ],
    });
    const big: HostTensor = { name: 'n', datatype: 'UINT64', shape: [2], data: new BigUint64Array([1n, 2n ** 64n - 1n]) };
    expect(encodeV1Response('row', [big])).toEqual({ predictions: [1, '18446744073709551615'] });
  });

  it('row responses need every output to share the batch dimension', () => {
    const odd: HostTensor = { name: 'odd', datatype: 'INT32', shape: [3], data: new Int32Array(3) };
    expectError(() => encodeV1Response('row', [scores, odd]), 'BAD_REQUEST', 'output "odd"', 'columnar');
    const scalar: HostTensor = { name: 'total', datatype: 'FP64', shape: [], data: new Float64Array([1]) };
    expectError(() => encodeV1Response('row', [scalar]), 'BAD_REQUEST', 'output "total"');
  });

  it('columnar responses: a bare value for one output, an object for several', () => {
    expect(encodeV1Response('columnar', [label])).toEqual({ outputs: ['cat', 'dog'] });
    const total: HostTensor = { name: 'total', datatype: 'FP16', shape: [], data: new Uint16Array([0x3c00]) };
    expect(encodeV1Response('columnar', [total, scores])).toEqual({
      outputs: { total: 1, scores: [[0.25, '-Infinity'], [1, 'NaN']] },
    });
  });

  it('round-trips a multi-input, multi-output model through JSON text', () => {
    const body = JSON.parse(JSON.stringify({ instances: [{ tokens: [1, 2, 3], text: 'x' }] }));
    const req = parseV1Request(body, TWO);
    const outputs: HostTensor[] = req.inputs.map((t) => ({ ...t, name: `${t.name}_out` }));
    expect(JSON.parse(JSON.stringify(encodeV1Response(req.format, outputs)))).toEqual({
      predictions: [{ tokens_out: [1, 2, 3], text_out: 'x' }],
    });
  });
});

describe('BYTES that string tensors cannot carry', () => {
  const expectBadRequest = (fn: () => unknown, pattern: RegExp): void => {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(EdgefleetError);
      expect((err as EdgefleetError).code).toBe('BAD_REQUEST');
      expect((err as Error).message).toMatch(pattern);
      return;
    }
    throw new Error('expected a BAD_REQUEST');
  };

  it('refuses a NUL character rather than letting ONNX Runtime cut the string', () => {
    expectBadRequest(() => decodeJson(['ok', 'a\u0000b'], 'BYTES', { input: 's' }), /input "s": BYTES element 1 contains a NUL/);
  });

  it('refuses b64 bytes that are not UTF-8 rather than replacing them', () => {
    expectBadRequest(() => decodeJson([{ b64: Buffer.from([0xff, 0xfe, 0x80]).toString('base64') }], 'BYTES', { input: 's', b64: true }), /input "s": BYTES element 0 is not valid UTF-8/);
  });
});
