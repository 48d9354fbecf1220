/**
 * The ONNX backend test cases Debian ships in libonnx-testdata: one folder per
 * case with model.onnx and test_data_set_0/{input,output}_N.pb TensorProtos.
 * Reads them with onnx-proto (as models/onnx/builder.ts writes models) into
 * the typed arrays onnxruntime-node uses, and compares results with a tolerance.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import type { onnx } from 'onnx-proto';
import type { ElemType, TensorData } from '../../models/onnx/builder.js';

const pb = onnxProto.onnx;

export const ONNX_BACKEND_DATA = '/usr/share/libonnx-testdata/data';

export interface CaseTensor {
  name: string;
  type: ElemType;
  dims: number[];
  data: TensorData;
}

export interface BackendCase {
  /** `node/test_abs`: the folder under the data root. */
  id: string;
  model: Uint8Array;
  inputs: CaseTensor[];
  outputs: CaseTensor[];
}

/** A case whose model or data this reader cannot turn into plain tensors, and why. */
export interface UnreadableCase {
  id: string;
  reason: string;
}

/** ONNX `TensorProto.DataType` codes; the ones not listed (complex, bfloat16, float8, int4) have no JS tensor type. */
const ELEM_OF: Readonly<Record<number, ElemType>> = {
  1: 'float32', 2: 'uint8', 3: 'int8', 4: 'uint16', 5: 'int16', 6: 'int32', 7: 'int64',
  8: 'string', 9: 'bool', 10: 'float16', 11: 'float64', 12: 'uint32', 13: 'uint64',
};
const TYPE_NAME: Readonly<Record<number, string>> = { 14: 'complex64', 15: 'complex128', 16: 'bfloat16' };

/** Every case folder (`{group}/{case}`) that has a model and a first data set, sorted. */
export async function listBackendCases(root = ONNX_BACKEND_DATA): Promise<string[]> {
  if (!existsSync(root)) return [];
  const out: string[] = [];
  for (const group of (await readdir(root)).sort()) {
    for (const name of (await readdir(join(root, group))).sort()) {
      const dir = join(root, group, name);
      if (existsSync(join(dir, 'model.onnx')) && existsSync(join(dir, 'test_data_set_0'))) out.push(`${group}/${name}`);
    }
  }
  return out;
}

type Io = onnx.IValueInfoProto;

function ioType(v: Io): { elem?: ElemType; reason?: string } {
  const t = v.type;
  if (!t?.tensorType) {
    const kind = t?.sequenceType ? 'a sequence' : t?.optionalType ? 'an optional' : t?.mapType ? 'a map' : 'not a tensor';
    return { reason: `"${v.name ?? ''}" is ${kind}` };
  }
  const code = t.tensorType.elemType ?? 0;
  const elem = ELEM_OF[code];
  return elem ? { elem } : { reason: `"${v.name ?? ''}" is ${TYPE_NAME[code] ?? `element type ${code}`}` };
}

/** Reads one case; a model whose graph inputs or outputs are not plain tensors is unreadable. */
export async function readBackendCase(id: string, root = ONNX_BACKEND_DATA): Promise<BackendCase | UnreadableCase> {
  const dir = join(root, id);
  const model = new Uint8Array(await readFile(join(dir, 'model.onnx')));
  const graph = pb.ModelProto.decode(model).graph;
  const initializers = new Set((graph?.initializer ?? []).map((t) => t.name));
  // Old models list initializers as graph inputs too; the test data feeds only the rest.
  const graphInputs = (graph?.input ?? []).filter((v) => !initializers.has(v.name));
  const graphOutputs = graph?.output ?? [];
  for (const v of [...graphInputs, ...graphOutputs]) {
    const { reason } = ioType(v);
    if (reason) return { id, reason };
  }
  const files = await readdir(join(dir, 'test_data_set_0'));
  const read = async (prefix: string, io: readonly Io[]): Promise<CaseTensor[]> => {
    const n = files.filter((f) => f.startsWith(prefix) && f.endsWith('.pb')).length;
    const out: CaseTensor[] = [];
    for (let i = 0; i < n; i++) {
      const proto = pb.TensorProto.decode(await readFile(join(dir, 'test_data_set_0', `${prefix}${i}.pb`)));
      out.push(toTensor(proto, io[i]?.name ?? ''));
    }
    return out;
  };
  try {
    return { id, model, inputs: await read('input_', graphInputs), outputs: await read('output_', graphOutputs) };
  } catch (err) {
    return { id, reason: (err as Error).message };
  }
}

const num = (v: number | { toString(): string }): number => (typeof v === 'number' ? v : Number(v.toString()));
const big = (v: number | { toString(): string }): bigint => BigInt(typeof v === 'number' ? v : v.toString());

function toTensor(t: onnx.TensorProto, fallbackName: string): CaseTensor {
  const code = t.dataType;
  const type = ELEM_OF[code];
  if (!type) throw new Error(`tensor "${t.name}" is ${TYPE_NAME[code] ?? `element type ${code}`}`);
  const dims = t.dims.map(num);
  const name = t.name || fallbackName;
  const count = dims.reduce((n, d) => n * d, 1);
  if (type === 'string') return { name, type, dims, data: t.stringData.map((b) => new TextDecoder().decode(b)) };
  const Ctor = ARRAY_TYPE[type];
  let data: Exclude<TensorData, readonly string[]>;
  if (t.rawData.length > 0) {
    // A copy: protobufjs hands out Buffer views at any offset, and typed arrays need alignment.
    const raw = new Uint8Array(t.rawData);
    data = new Ctor(raw.buffer, raw.byteOffset, raw.byteLength / Ctor.BYTES_PER_ELEMENT);
  } else if (type === 'float32') data = Float32Array.from(t.floatData);
  else if (type === 'float64') data = Float64Array.from(t.doubleData);
  else if (type === 'int64') data = BigInt64Array.from(t.int64Data.map(big));
  else if (type === 'uint64') data = BigUint64Array.from(t.uint64Data.map(big));
  else if (type === 'uint32') data = Uint32Array.from(t.uint64Data.map(num));
  // int32_data holds every narrower type, float16 as its bits.
  else data = (Ctor as unknown as { from(a: number[]): typeof data }).from(t.int32Data);
  if (data.length !== count) throw new Error(`tensor "${name}" has ${data.length} elements for dims [${dims.join(', ')}]`);
  return { name, type, dims, data };
}

type NumericCtor = (new (buffer: ArrayBufferLike, byteOffset: number, length: number) => Exclude<TensorData, readonly string[]>) & { BYTES_PER_ELEMENT: number };
const ARRAY_TYPE: Record<Exclude<ElemType, 'string'>, NumericCtor> = {
  bool: Uint8Array, uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, float16: Uint16Array,
  int16: Int16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array,
  uint64: BigUint64Array, float32: Float32Array, float64: Float64Array,
};

/** IEEE half bits → number. */
export function halfToNumber(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Elements as numbers (FP16 decoded, bigints converted) or strings. */
export function elementsOf(type: ElemType, data: ArrayLike<unknown>): (number | string)[] {
  const out: (number | string)[] = [];
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    out.push(typeof v === 'string' ? v : type === 'float16' ? halfToNumber(v as number) : typeof v === 'bigint' ? Number(v) : Number(v));
  }
  return out;
}

/**
 * Why `got` differs from `want`, or undefined when it matches: same shape,
 * and each element within |got - want| <= atol + rtol * |want| (NaN matches
 * NaN, infinities must be equal, strings exact). The tolerances are the ONNX
 * backend runner's loosest (rtol 1e-3), since kernels differ in rounding.
 */
export function mismatch(
  got: { dims: readonly number[]; values: readonly (number | string)[] },
  want: CaseTensor,
  atol = 1e-4,
  rtol = 1e-3,
): string | undefined {
  if (got.dims.join('x') !== want.dims.join('x')) return `shape [${got.dims.join(', ')}], expected [${want.dims.join(', ')}]`;
  const expected = elementsOf(want.type, want.data);
  if (got.values.length !== expected.length) return `${got.values.length} elements, expected ${expected.length}`;
  for (let i = 0; i < expected.length; i++) {
    const g = got.values[i] as number | string;
    const w = expected[i] as number | string;
    const ok =
      typeof w === 'string' || typeof g === 'string'
        ? g === w
        : Number.isNaN(w)
          ? Number.isNaN(g)
          : !Number.isFinite(w)
            ? g === w
            : Math.abs(g - w) <= atol + rtol * Math.abs(w);
    if (!ok) return `element ${i} is ${String(g)}, expected ${String(w)}`;
  }
  return undefined;
}

/** Elements of a v2 JSON `data` array, as the HTTP API writes them, in the form mismatch() compares. */
export function elementsOfV2(datatype: string, data: readonly unknown[]): (number | string)[] {
  return data.map((v) => {
    if (typeof v === 'boolean') return v ? 1 : 0;
    // Non-finite floats and 64-bit integers past 2^53 come as strings; BYTES stay strings.
    if (typeof v === 'string' && datatype !== 'BYTES') return Number(v);
    return v as number | string;
  });
}

/** OIP datatype of each element type (the names onnxruntime-node and the builder share). */
export const V2_DATATYPE: Readonly<Record<ElemType, string>> = {
  bool: 'BOOL', uint8: 'UINT8', int8: 'INT8', uint16: 'UINT16', int16: 'INT16', uint32: 'UINT32', int32: 'INT32',
  uint64: 'UINT64', int64: 'INT64', float16: 'FP16', float32: 'FP32', float64: 'FP64', string: 'BYTES',
};

/**
 * A case tensor as a v2 infer request's JSON input, written the way the HTTP
 * API documents (docs/http-api.md): non-finite floats as "NaN"/"Infinity"
 * strings, 64-bit integers past 2^53 as decimal strings, FP16 as numbers.
 */
export function toV2Input(t: CaseTensor): { name: string; datatype: string; shape: number[]; data: unknown[] } {
  const data: unknown[] = [];
  for (let i = 0; i < t.data.length; i++) {
    const v = t.data[i];
    if (typeof v === 'string') data.push(v);
    else if (typeof v === 'bigint') data.push(v >= -(2n ** 53n) + 1n && v <= 2n ** 53n - 1n ? Number(v) : v.toString());
    else if (t.type === 'bool') data.push(v !== 0);
    else {
      const x = t.type === 'float16' ? halfToNumber(v as number) : (v as number);
      data.push(Number.isFinite(x) ? x : String(x));
    }
  }
  return { name: t.name, datatype: V2_DATATYPE[t.type], shape: t.dims, data };
}
