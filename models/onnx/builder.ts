/**
 * A small typed builder for ONNX ModelProto bytes, so test and benchmark
 * models are generated from readable code instead of checked-in blobs.
 *
 * Element type names match onnxruntime-node's `Tensor.type` strings, and
 * tensor data uses the same typed arrays onnxruntime-node does (float16 as
 * Uint16Array half bits, bool as Uint8Array 0/1, (u)int64 as BigInt arrays).
 */
import onnxProto from 'onnx-proto';
import type { onnx } from 'onnx-proto';

// onnx-proto is CommonJS (`module.exports = root`), so only the default import works under ESM.
const pb = onnxProto.onnx;

export type ElemType =
  | 'bool' | 'int8' | 'uint8' | 'int16' | 'uint16' | 'int32' | 'uint32' | 'int64' | 'uint64'
  | 'float16' | 'float32' | 'float64' | 'string';

/** ONNX `TensorProto.DataType` codes (onnx.proto) for each element type. */
export const DATA_TYPE: Readonly<Record<ElemType, number>> = {
  float32: 1, uint8: 2, int8: 3, uint16: 4, int16: 5, int32: 6, int64: 7,
  string: 8, bool: 9, float16: 10, float64: 11, uint32: 12, uint64: 13,
};

export const ELEM_TYPES = Object.keys(DATA_TYPE) as ElemType[];

/** A dimension: a fixed size, or a symbolic name (dynamic, e.g. 'batch'). */
export type Dim = number | string;

export interface ValueInfo {
  name: string;
  type: ElemType;
  shape: readonly Dim[];
}

export type TensorData =
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
  | BigInt64Array | BigUint64Array | Float32Array | Float64Array | readonly string[];

export interface TensorSpec {
  name: string;
  type: ElemType;
  dims: readonly number[];
  data: TensorData;
}

/** Attribute values are tagged because a JS number cannot say whether it is an INT or a FLOAT. */
export type Attr =
  | { kind: 'int'; value: number }
  | { kind: 'ints'; value: readonly number[] }
  | { kind: 'float'; value: number }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'string'; value: string }
  | { kind: 'tensor'; value: TensorSpec };

/** Shorthand constructors for {@link Attr}. */
export const attr = {
  int: (value: number): Attr => ({ kind: 'int', value }),
  ints: (value: readonly number[]): Attr => ({ kind: 'ints', value }),
  float: (value: number): Attr => ({ kind: 'float', value }),
  floats: (value: readonly number[]): Attr => ({ kind: 'floats', value }),
  string: (value: string): Attr => ({ kind: 'string', value }),
  tensor: (value: TensorSpec): Attr => ({ kind: 'tensor', value }),
};

export interface NodeSpec {
  op: string;
  inputs: readonly string[];
  outputs: readonly string[];
  name?: string;
  /** Operator domain; '' (default ONNX domain) when omitted. */
  domain?: string;
  attrs?: Readonly<Record<string, Attr>>;
}

export interface ModelSpec {
  /** Graph name; also used as the model's doc string when no `doc` is given. */
  name: string;
  doc?: string;
  inputs: readonly ValueInfo[];
  outputs: readonly ValueInfo[];
  nodes: readonly NodeSpec[];
  initializers?: readonly TensorSpec[];
  /** Extra operator-set domains, e.g. `{ 'com.microsoft': 1 }`; the default domain is always opset 17. */
  opsets?: Readonly<Record<string, number>>;
}

export const IR_VERSION = 8;
export const DEFAULT_OPSET = 17;

/** Typed-array constructor each element type must be stored in. */
const ARRAY_TYPE: Readonly<Record<Exclude<ElemType, 'string'>, { name: string }>> = {
  bool: Uint8Array, uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, float16: Uint16Array,
  int16: Int16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array,
  uint64: BigUint64Array, float32: Float32Array, float64: Float64Array,
};

// raw_data is little-endian by spec; copying typed-array bytes is only correct on a LE host.
const HOST_IS_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function checkTensorData(t: TensorSpec): void {
  const count = t.dims.reduce((n, d) => n * d, 1);
  if (t.data.length !== count) {
    throw new Error(`tensor ${t.name}: ${t.data.length} elements for dims [${t.dims.join(',')}]`);
  }
  if (t.type === 'string') {
    if (!Array.isArray(t.data)) throw new Error(`tensor ${t.name}: string data must be string[]`);
    return;
  }
  const want = ARRAY_TYPE[t.type];
  if (t.data.constructor !== want) {
    throw new Error(`tensor ${t.name}: ${t.type} data must be a ${want.name}`);
  }
}

/** Build a TensorProto; numeric data goes in raw_data, strings in string_data (raw_data cannot hold them). */
export function tensorProto(t: TensorSpec): onnx.ITensorProto {
  checkTensorData(t);
  const base = { name: t.name, dataType: DATA_TYPE[t.type], dims: [...t.dims] };
  if (t.type === 'string') {
    const enc = new TextEncoder();
    return { ...base, stringData: (t.data as readonly string[]).map((s) => enc.encode(s)) };
  }
  if (!HOST_IS_LE) throw new Error('ONNX raw_data encoding requires a little-endian host');
  const view = t.data as Exclude<TensorData, readonly string[]>;
  // Copy so the proto does not alias (or over-read) a larger shared buffer.
  const rawData = new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
  return { ...base, rawData };
}

function attrProto(name: string, a: Attr): onnx.IAttributeProto {
  const T = pb.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'int': return { name, type: T.INT, i: a.value };
    case 'ints': return { name, type: T.INTS, ints: [...a.value] };
    case 'float': return { name, type: T.FLOAT, f: a.value };
    case 'floats': return { name, type: T.FLOATS, floats: [...a.value] };
    case 'string': return { name, type: T.STRING, s: new TextEncoder().encode(a.value) };
    case 'tensor': return { name, type: T.TENSOR, t: tensorProto(a.value) };
  }
}

function valueInfoProto(v: ValueInfo): onnx.IValueInfoProto {
  const dim = v.shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }));
  return { name: v.name, type: { tensorType: { elemType: DATA_TYPE[v.type], shape: { dim } } } };
}

function nodeProto(n: NodeSpec, index: number): onnx.INodeProto {
  return {
    name: n.name ?? `${n.op}_${index}`,
    opType: n.op,
    domain: n.domain ?? '',
    input: [...n.inputs],
    output: [...n.outputs],
    attribute: Object.entries(n.attrs ?? {}).map(([k, a]) => attrProto(k, a)),
  };
}

/** Encode a complete ModelProto (IR version 8, default-domain opset 17). */
export function buildModel(spec: ModelSpec): Uint8Array {
  const opsetImport = [{ domain: '', version: DEFAULT_OPSET }];
  for (const [domain, version] of Object.entries(spec.opsets ?? {})) {
    if (domain !== '') opsetImport.push({ domain, version });
  }
  const model = pb.ModelProto.create({
    irVersion: IR_VERSION,
    producerName: 'edgefleet-zoo',
    producerVersion: '1',
    docString: spec.doc ?? spec.name,
    opsetImport,
    graph: {
      name: spec.name,
      input: spec.inputs.map(valueInfoProto),
      output: spec.outputs.map(valueInfoProto),
      node: spec.nodes.map(nodeProto),
      initializer: (spec.initializers ?? []).map(tensorProto),
    },
  });
  const encoded = pb.ModelProto.encode(model).finish();
  // In Node protobufjs returns a Buffer, possibly a slice of a shared pool: hand back a plain, owned copy.
  return new Uint8Array(encoded.buffer, encoded.byteOffset, encoded.byteLength).slice();
}

/** Decode model bytes (for tests that inspect what was built). */
export function decodeModel(bytes: Uint8Array): onnx.ModelProto {
  return pb.ModelProto.decode(bytes);
}
