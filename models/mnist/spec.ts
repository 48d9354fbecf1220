/**
 * Decode ONNX model bytes back into the builder's {@link ModelSpec}, so a
 * graph rewrite (quantize.ts) can edit plain objects and re-encode them with
 * `buildModel` instead of mutating protobuf messages.
 *
 * Covers what models/onnx/builder.ts writes: numeric tensors (raw_data, or the
 * typed float/int32/int64 fields), string tensors, and scalar/list/tensor
 * attributes. Anything else (subgraphs, sparse tensors, external data) throws
 * rather than being dropped silently.
 */
import onnxProto from 'onnx-proto';
import type { onnx } from 'onnx-proto';

import { DATA_TYPE, decodeModel } from '../onnx/builder.js';
import type { Attr, ElemType, ModelSpec, NodeSpec, TensorData, TensorSpec, ValueInfo } from '../onnx/builder.js';

// onnx-proto is CommonJS: only its default import works under ESM (as in builder.ts).
const AttrType = onnxProto.onnx.AttributeProto.AttributeType;

/** protobufjs decodes int64 fields as `Long` objects (the `long` package is installed) or numbers. */
type Int64 = number | { toNumber(): number };

export function int64(v: Int64 | null | undefined): number {
  if (v === null || v === undefined) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}

const TYPE_OF_CODE = new Map<number, ElemType>(
  Object.entries(DATA_TYPE).map(([name, code]) => [code, name as ElemType]),
);

type NumericArray = Exclude<TensorData, readonly string[]>;
interface ArrayCtor {
  new (buffer: ArrayBuffer): NumericArray;
  readonly BYTES_PER_ELEMENT: number;
}

/** Same storage types as builder.ts uses when encoding. */
const ARRAY_OF: Readonly<Record<Exclude<ElemType, 'string'>, ArrayCtor>> = {
  bool: Uint8Array, uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, float16: Uint16Array,
  int16: Int16Array, int32: Int32Array, uint32: Uint32Array, int64: BigInt64Array,
  uint64: BigUint64Array, float32: Float32Array, float64: Float64Array,
};

function elemType(code: number | null | undefined, what: string): ElemType {
  const t = TYPE_OF_CODE.get(code ?? 0);
  if (!t) throw new Error(`${what}: unsupported ONNX data type ${code}`);
  return t;
}

/** Numeric data from raw_data (copied into an aligned buffer) or from the typed repeated fields. */
function numericData(t: onnx.ITensorProto, type: Exclude<ElemType, 'string'>, name: string): NumericArray {
  const Ctor = ARRAY_OF[type];
  if (t.rawData && t.rawData.length > 0) {
    // raw_data may sit at any offset of the decode buffer; slice() gives an owned, aligned copy.
    return new Ctor(t.rawData.slice().buffer);
  }
  if (type === 'float32') return Float32Array.from(t.floatData ?? []);
  if (type === 'float64') return Float64Array.from(t.doubleData ?? []);
  if (type === 'int64') return BigInt64Array.from((t.int64Data ?? []).map((v) => BigInt(int64(v))));
  if (t.int32Data && t.int32Data.length > 0) {
    // int8/uint8/int16/uint16/int32/bool/float16 all travel in int32_data when not raw.
    const out = new Ctor(new ArrayBuffer(t.int32Data.length * Ctor.BYTES_PER_ELEMENT));
    (out as Int32Array).set(t.int32Data);
    return out;
  }
  const count = (t.dims ?? []).reduce<number>((n, d) => n * int64(d), 1);
  if (count === 0) return new Ctor(new ArrayBuffer(0));
  throw new Error(`tensor ${name}: no data (external data is not supported)`);
}

export function tensorFromProto(t: onnx.ITensorProto): TensorSpec {
  const name = t.name ?? '';
  const type = elemType(t.dataType, `tensor ${name}`);
  const dims = (t.dims ?? []).map(int64);
  if (type === 'string') {
    const dec = new TextDecoder();
    return { name, type, dims, data: (t.stringData ?? []).map((s) => dec.decode(s)) };
  }
  return { name, type, dims, data: numericData(t, type, name) };
}

function attrFromProto(a: onnx.IAttributeProto, node: string): Attr {
  const t = a.type;
  if (t === AttrType.INT) return { kind: 'int', value: int64(a.i) };
  if (t === AttrType.INTS) return { kind: 'ints', value: (a.ints ?? []).map(int64) };
  if (t === AttrType.FLOAT) return { kind: 'float', value: a.f ?? 0 };
  if (t === AttrType.FLOATS) return { kind: 'floats', value: [...(a.floats ?? [])] };
  if (t === AttrType.STRING) return { kind: 'string', value: new TextDecoder().decode(a.s ?? new Uint8Array()) };
  if (t === AttrType.TENSOR && a.t) return { kind: 'tensor', value: tensorFromProto(a.t) };
  // Graphs, sparse tensors, string/tensor lists: builder.ts cannot write them either.
  throw new Error(`node ${node}: attribute ${a.name} of type ${t} is not supported`);
}

function nodeFromProto(n: onnx.INodeProto): NodeSpec {
  const name = n.name ?? '';
  const attrs: Record<string, Attr> = {};
  for (const a of n.attribute ?? []) attrs[a.name ?? ''] = attrFromProto(a, name);
  return {
    op: n.opType ?? '',
    inputs: [...(n.input ?? [])],
    outputs: [...(n.output ?? [])],
    ...(name ? { name } : {}),
    ...(n.domain ? { domain: n.domain } : {}),
    attrs,
  };
}

function valueInfoFromProto(v: onnx.IValueInfoProto): ValueInfo {
  const name = v.name ?? '';
  const tensor = v.type?.tensorType;
  if (!tensor) throw new Error(`value ${name}: only tensor types are supported`);
  const shape = (tensor.shape?.dim ?? []).map((d) => (d.dimParam ? d.dimParam : int64(d.dimValue)));
  return { name, type: elemType(tensor.elemType, `value ${name}`), shape };
}

/**
 * The spec of a model, as buildModel would take it. The default-domain opset
 * is not kept: buildModel always writes opset 17 (what builder.ts models use).
 */
export function specFromModel(bytes: Uint8Array): ModelSpec {
  const model = decodeModel(bytes);
  const g = model.graph;
  if (!g) throw new Error('model has no graph');
  const opsets: Record<string, number> = {};
  for (const o of model.opsetImport) if (o.domain) opsets[o.domain] = int64(o.version);
  return {
    name: g.name ?? 'graph',
    doc: model.docString || (g.name ?? 'graph'),
    inputs: (g.input ?? []).map(valueInfoFromProto),
    outputs: (g.output ?? []).map(valueInfoFromProto),
    nodes: (g.node ?? []).map(nodeFromProto),
    initializers: (g.initializer ?? []).map(tensorFromProto),
    opsets,
  };
}
