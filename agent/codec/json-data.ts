/**
 * JSON values ↔ tensor element arrays, shared by the TF Serving v1 and KServe v2
 * codecs. Pure functions; every client mistake is an EdgefleetError naming the input.
 *
 * Non-finite floats: JSON has no NaN or Infinity literal (JSON.stringify would write
 * null). FP16, FP32 and FP64 inputs therefore accept the strings "NaN", "Infinity"
 * and "-Infinity" in place of a number, and outputs write non-finite floats as those
 * same strings, so responses are valid JSON and round-trip. Any other string in a
 * float tensor is a 400.
 *
 * INT64/UINT64: JSON numbers are doubles, exact only up to 2^53. Inputs accept safe
 * integers or decimal strings; outputs are numbers when safe, decimal strings otherwise.
 */
import { Buffer } from 'node:buffer';
import { badRequest } from '../errors.js';
import { elementCount } from '../runtime/tensor.js';
import type { Datatype, TensorData } from '../runtime/tensor.js';
import { floatToHalf, halfToFloat } from './fp16.js';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface JsonDecodeOptions {
  /** Input name, for error messages. */
  input: string;
  /** Accept TF Serving's `{"b64": "..."}` objects as BYTES elements. */
  b64?: boolean;
  /** When given, the element count must equal this shape's product (v2 `shape`). */
  expectedShape?: readonly number[];
}

export interface DecodedJson {
  data: TensorData;
  /** The shape the nesting implies; [] for a scalar, [n] for a flat array. */
  shape: number[];
}

/** Deeper nesting is certainly a mistake, and recursion must stay bounded. */
const MAX_RANK = 32;

/**
 * An array as decodeJson takes it: a JS array, or a Float64Array standing for
 * a JS array of those numbers (fast-json.ts reads rows of numbers that way).
 */
type Rows = readonly unknown[] | Float64Array;

const isRows = (v: unknown): v is Rows => Array.isArray(v) || v instanceof Float64Array;

/**
 * Converts a JSON scalar or (nested) array into typed element data. Any
 * array may be a Float64Array of numbers instead (see Rows), with the same
 * result and the same errors.
 */
export function decodeJson(value: unknown, datatype: Datatype, opts: JsonDecodeOptions): DecodedJson {
  const shape = nestedShape(value, opts.input);
  // Row lengths are checked before allocating, so the shape's product is real data.
  if (shape.length > 1) checkRows(value as Rows, shape, 0, opts.input);
  const count = elementCount(shape);
  checkCount(count, opts);
  const sink = makeSink(datatype, count, opts);
  if (shape.length === 0) sink.put(value, 0);
  else fillLeaves(value as Rows, shape, 0, sink, 0, opts.input);
  return { data: sink.data, shape };
}

/**
 * decodeJson of a flat array of JSON numbers that fast-json.ts already read
 * into a Float64Array: the same checks, errors and result as
 * `decodeJson(Array.from(values), datatype, opts)`, without the per-element
 * round trip through a JS array. The result never shares memory with `values`.
 */
export function decodeNumbers(values: Float64Array, datatype: Datatype, opts: JsonDecodeOptions): DecodedJson {
  const count = values.length;
  checkCount(count, opts);
  const shape = [count];
  // Storing a double into a Float32Array rounds it exactly as the element-wise sink does.
  if (datatype === 'FP32') return { data: new Float32Array(values), shape };
  if (datatype === 'FP64') return { data: values.slice(), shape };
  const sink = makeSink(datatype, count, opts);
  for (let i = 0; i < count; i++) sink.put(values[i], i);
  return { data: sink.data, shape };
}

function checkCount(count: number, opts: JsonDecodeOptions): void {
  if (opts.expectedShape && count !== elementCount(opts.expectedShape)) {
    throw badRequest(
      `input "${opts.input}": data has ${count} elements, but shape ${fmtShape(opts.expectedShape)} ` +
        `needs ${elementCount(opts.expectedShape)}`,
    );
  }
}

/** Shape implied by nested arrays, following first elements (checkRows then verifies every row). */
function nestedShape(value: unknown, input: string): number[] {
  const shape: number[] = [];
  let v = value;
  while (isRows(v)) {
    if (shape.length === MAX_RANK) throw badRequest(`input "${input}": arrays nested deeper than ${MAX_RANK}`);
    shape.push(v.length);
    if (v.length === 0) break;
    v = v[0];
  }
  return shape;
}

function ragged(input: string, detail: string): Error {
  return badRequest(`input "${input}": ragged nested array (${detail}); every row must have the same length`);
}

function checkRows(rows: Rows, shape: readonly number[], depth: number, input: string): void {
  if (rows.length !== shape[depth]) {
    throw ragged(input, `a row at depth ${depth} has ${rows.length} elements, expected ${shape[depth]}`);
  }
  if (depth === shape.length - 1) return;
  for (const row of rows) {
    if (!isRows(row)) throw ragged(input, `a value appears where depth ${depth + 1} needs an array`);
    checkRows(row, shape, depth + 1, input);
  }
}

function fillLeaves(rows: Rows, shape: readonly number[], depth: number, sink: Sink, at: number, input: string): number {
  if (depth < shape.length - 1) {
    for (const row of rows) at = fillLeaves(row as Rows, shape, depth + 1, sink, at, input);
    return at;
  }
  // Row lengths were checked already; leaves still have to be non-arrays.
  if (sink instanceof FloatSink) {
    sink.putRow(rows, at);
    return at + rows.length;
  }
  for (let i = 0; i < rows.length; i++) {
    const v = rows[i];
    if (isRows(v)) throw ragged(input, `element ${at + i} is an array`);
    sink.put(v, at + i);
  }
  return at + rows.length;
}

/** Typed output plus an element writer that validates as it goes. */
interface Sink {
  data: TensorData;
  put(v: unknown, i: number): void;
}

type NumberArray = Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array | Float32Array | Float64Array;

function makeSink(dt: Datatype, n: number, opts: JsonDecodeOptions): Sink {
  const input = opts.input;
  switch (dt) {
    case 'FP32': return new FloatSink(new Float32Array(n), dt, input);
    case 'FP64': return new FloatSink(new Float64Array(n), dt, input);
    case 'FP16': {
      const out = new Uint16Array(n);
      return { data: out, put: (v, i) => { out[i] = floatToHalf(typeof v === 'number' ? v : special(v, i, dt, input)); } };
    }
    case 'BOOL': {
      const out = new Uint8Array(n);
      return { data: out, put: (v, i) => { out[i] = toBool(v, i, input); } };
    }
    case 'UINT8': return intSink(new Uint8Array(n), dt, 0, 0xff, input);
    case 'INT8': return intSink(new Int8Array(n), dt, -0x80, 0x7f, input);
    case 'UINT16': return intSink(new Uint16Array(n), dt, 0, 0xffff, input);
    case 'INT16': return intSink(new Int16Array(n), dt, -0x8000, 0x7fff, input);
    case 'UINT32': return intSink(new Uint32Array(n), dt, 0, 0xffffffff, input);
    case 'INT32': return intSink(new Int32Array(n), dt, -0x80000000, 0x7fffffff, input);
    case 'INT64': {
      const out = new BigInt64Array(n);
      return { data: out, put: (v, i) => { out[i] = toBigInt(v, i, 'INT64', input); } };
    }
    case 'UINT64': {
      const out = new BigUint64Array(n);
      return { data: out, put: (v, i) => { out[i] = toBigInt(v, i, 'UINT64', input); } };
    }
    case 'BYTES': {
      const out = new Array<string>(n);
      return { data: out, put: (v, i) => { out[i] = toText(v, i, input, opts.b64 === true); } };
    }
  }
}

/** The common case, as a class: no closures to build per request, and a whole row per call. */
class FloatSink implements Sink {
  constructor(
    readonly data: Float32Array | Float64Array,
    private readonly dt: Datatype,
    private readonly input: string,
  ) {}

  put(v: unknown, i: number): void {
    this.data[i] = typeof v === 'number' ? v : special(v, i, this.dt, this.input);
  }

  /** fillLeaves' leaf loop for floats: same checks, in the same order, element by element. */
  putRow(row: Rows, at: number): void {
    const out = this.data;
    if (row instanceof Float64Array) {
      // Numbers only: storing them rounds exactly as the element-wise loop does.
      out.set(row, at);
      return;
    }
    for (let i = 0; i < row.length; i++) {
      const v = row[i];
      if (typeof v === 'number') out[at + i] = v;
      else if (isRows(v)) throw ragged(this.input, `element ${at + i} is an array`);
      else out[at + i] = special(v, at + i, this.dt, this.input);
    }
  }
}

function intSink(out: NumberArray, dt: Datatype, min: number, max: number, input: string): Sink {
  return {
    data: out,
    put: (v, i) => {
      if (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max) out[i] = v;
      else throw intError(v, i, dt, input);
    },
  };
}

const NON_FINITE: Record<string, number> = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

/** The non-finite policy: only these three strings stand in for numbers. */
function special(v: unknown, i: number, dt: Datatype, input: string): number {
  const x = typeof v === 'string' ? NON_FINITE[v] : undefined;
  if (x === undefined) {
    throw badRequest(`input "${input}": element ${i} is ${show(v)}, expected a number for ${dt} ` +
      '(or "NaN", "Infinity", "-Infinity")');
  }
  return x;
}

function intError(v: unknown, i: number, dt: Datatype, input: string): Error {
  const why = typeof v !== 'number' ? 'expected an integer' : !Number.isInteger(v) ? 'not an integer' : `out of range for ${dt}`;
  return badRequest(`input "${input}": element ${i} is ${show(v)}, ${why}`);
}

function toBool(v: unknown, i: number, input: string): number {
  if (v === true || v === 1) return 1;
  if (v === false || v === 0) return 0;
  throw badRequest(`input "${input}": element ${i} is ${show(v)}, expected true/false (or 1/0) for BOOL`);
}

const BIG_RANGE = {
  INT64: [-(2n ** 63n), 2n ** 63n - 1n],
  UINT64: [0n, 2n ** 64n - 1n],
} as const;

function toBigInt(v: unknown, i: number, dt: 'INT64' | 'UINT64', input: string): bigint {
  let b: bigint;
  if (typeof v === 'number' && Number.isSafeInteger(v)) b = BigInt(v);
  else if (typeof v === 'string' && /^-?\d{1,20}$/.test(v)) b = BigInt(v);
  else if (typeof v === 'number' && Number.isInteger(v)) {
    throw badRequest(`input "${input}": element ${i} is ${show(v)}, beyond 2^53 where JSON numbers lose ` +
      `precision; send ${dt} values like this as decimal strings`);
  } else {
    throw badRequest(`input "${input}": element ${i} is ${show(v)}, expected an integer or decimal string`);
  }
  const [min, max] = BIG_RANGE[dt];
  if (b < min || b > max) throw badRequest(`input "${input}": element ${i} is ${show(v)}, out of range for ${dt}`);
  return b;
}

function toText(v: unknown, i: number, input: string, b64: boolean): string {
  if (typeof v === 'string') return checkOrtString(v, i, input);
  if (b64 && isB64Object(v)) return bytesToText(decodeBase64(v.b64, input), i, input);
  const expected = b64 ? 'a string or {"b64": "..."}' : 'a string';
  throw badRequest(`input "${input}": element ${i} is ${show(v)}, expected ${expected} for BYTES`);
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * ONNX Runtime's JavaScript API carries string tensors as JS strings and cuts
 * them at a NUL, so BYTES elements must be NUL-free UTF-8 text; anything else
 * would be changed silently, so it is refused.
 */
export function bytesToText(bytes: Uint8Array, i: number, input: string): string {
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw badRequest(`input "${input}": BYTES element ${i} is not valid UTF-8; string tensors carry text`);
  }
  return checkOrtString(text, i, input);
}

function checkOrtString(text: string, i: number, input: string): string {
  if (text.includes('\u0000')) throw badRequest(`input "${input}": BYTES element ${i} contains a NUL character, which string tensors cannot hold`);
  return text;
}

/** TF Serving's bytes wrapper: an object whose only key is "b64", holding a string. */
export function isB64Object(v: unknown): v is { b64: string } {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const keys = Object.keys(v);
  return keys.length === 1 && keys[0] === 'b64' && typeof (v as { b64: unknown }).b64 === 'string';
}

// Standard alphabet; padding optional but, if present, must complete the last quantum.
const BASE64 = /^[A-Za-z0-9+/]*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64: Buffer.from silently skips bad characters, so validate first. */
export function decodeBase64(s: string, input: string): Buffer {
  if (s.length % 4 === 1 || !BASE64.test(s)) {
    throw badRequest(`input "${input}": invalid base64 in {"b64": ...} (${show(s)})`);
  }
  return Buffer.from(s, 'base64');
}

export interface JsonEncodeOptions {
  /** Write BYTES elements as {"b64": ...} (TF Serving does for outputs named *_bytes). */
  b64?: boolean;
}

/** Element data as a flat JSON array (v2 `data`). */
export function encodeJsonFlat(datatype: Datatype, data: TensorData, opts: JsonEncodeOptions = {}): JsonValue[] {
  const n = data.length;
  const out = new Array<JsonValue>(n);
  switch (datatype) {
    case 'FP32':
    case 'FP64':
      for (let i = 0; i < n; i++) out[i] = finite(data[i] as number);
      return out;
    case 'FP16':
      for (let i = 0; i < n; i++) out[i] = finite(halfToFloat(data[i] as number));
      return out;
    case 'BOOL':
      for (let i = 0; i < n; i++) out[i] = data[i] !== 0;
      return out;
    case 'INT64':
    case 'UINT64':
      for (let i = 0; i < n; i++) out[i] = bigToJson(data[i] as bigint);
      return out;
    case 'BYTES':
      for (let i = 0; i < n; i++) {
        const s = data[i] as string;
        out[i] = opts.b64 ? { b64: Buffer.from(s, 'utf8').toString('base64') } : s;
      }
      return out;
    case 'UINT8': case 'INT8': case 'UINT16': case 'INT16': case 'UINT32': case 'INT32':
      for (let i = 0; i < n; i++) out[i] = data[i] as number;
      return out;
  }
}

/**
 * `JSON.stringify(encodeJsonFlat(datatype, data, opts))`, the text of a v2
 * `data` array. Number formatting is JSON.stringify's own (nothing written in
 * JS beats it); float arrays without NaN or infinities skip the mixed array.
 */
export function encodeJsonFlatText(datatype: Datatype, data: TensorData, opts: JsonEncodeOptions = {}): string {
  if (datatype === 'FP32' || datatype === 'FP64') {
    const d = data as Float32Array | Float64Array;
    let finiteOnly = true;
    for (let i = 0; i < d.length; i++) {
      const x = d[i] as number;
      if (x - x !== 0) {
        finiteOnly = false;
        break;
      }
    }
    if (finiteOnly) return JSON.stringify(Array.from(d));
  }
  return JSON.stringify(encodeJsonFlat(datatype, data, opts));
}

/** Element data nested to `shape` (v1); a rank-0 shape gives the bare scalar. */
export function encodeJsonNested(
  datatype: Datatype,
  data: TensorData,
  shape: readonly number[],
  opts: JsonEncodeOptions = {},
): JsonValue {
  const flat = encodeJsonFlat(datatype, data, opts);
  if (shape.length === 0) return flat[0] ?? null;
  return nest(flat, shape, 0, { at: 0 });
}

function nest(flat: JsonValue[], shape: readonly number[], depth: number, pos: { at: number }): JsonValue[] {
  const n = shape[depth] ?? 0;
  if (depth === shape.length - 1) {
    pos.at += n;
    return flat.slice(pos.at - n, pos.at);
  }
  const out = new Array<JsonValue>(n);
  for (let i = 0; i < n; i++) out[i] = nest(flat, shape, depth + 1, pos);
  return out;
}

function finite(x: number): number | string {
  return Number.isFinite(x) ? x : Number.isNaN(x) ? 'NaN' : x > 0 ? 'Infinity' : '-Infinity';
}

function bigToJson(b: bigint): number | string {
  return b >= -9007199254740991n && b <= 9007199254740991n ? Number(b) : b.toString();
}

/** Shows a Float64Array that stands for a JSON array (Rows) as that array. */
const asArrays = (_key: string, x: unknown): unknown => (x instanceof Float64Array ? Array.from(x) : x);

/** A short rendering of a client's value for error messages. */
export function show(v: unknown): string {
  let s: string;
  try {
    s = JSON.stringify(v, asArrays) ?? String(v);
  } catch {
    // Valid JSON can nest deeper than JSON.stringify's stack allows.
    s = isRows(v) ? '[...]' : '{...}';
  }
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}
