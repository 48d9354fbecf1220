/**
 * TensorFlow's TensorProto (tensorflow/core/framework/tensor.proto) to and from
 * the agent's tensors. A request tensor comes either as `tensor_content` (raw
 * little-endian bytes, what `tf.make_tensor_proto` writes for arrays) or in the
 * typed field of its dtype (`float_val`, `int_val`, ...; one value fills the
 * whole shape, as TensorFlow reads it). Answers are written by tf-response.ts.
 */
import { badRequest, unsupported } from '../errors.js';
import { TF_DTYPE } from '../http/model-info.js';
import { bytesToText, decodeJson, fmtShape } from '../codec/json-data.js';
import { checkShape, decodeBinaryTensor } from '../codec/v2.js';
import { ELEMENT_SIZE, elementCount } from '../runtime/tensor.js';
import type { Datatype, HostTensor, TensorData, TensorSpec } from '../runtime/tensor.js';

/** A TensorProto as proto-loader hands it over (protos.ts: 64-bit integers as strings, enums by name). */
export interface TensorProtoMessage {
  dtype?: string;
  tensor_shape?: { dim?: { size?: string | number; name?: string }[]; unknown_rank?: boolean };
  tensor_content?: Buffer;
  half_val?: number[];
  float_val?: number[];
  double_val?: number[];
  int_val?: number[];
  string_val?: Buffer[];
  int64_val?: (string | number)[];
  bool_val?: boolean[];
  uint32_val?: number[];
  uint64_val?: (string | number)[];
}

type TypedField = 'half_val' | 'float_val' | 'double_val' | 'int_val' | 'string_val' | 'int64_val' | 'bool_val' | 'uint32_val' | 'uint64_val';

/** The typed field each datatype's values travel in (tensor.proto's comments). */
const FIELD: Record<Datatype, TypedField> = {
  BOOL: 'bool_val', UINT8: 'int_val', INT8: 'int_val', UINT16: 'int_val', INT16: 'int_val', INT32: 'int_val',
  UINT32: 'uint32_val', INT64: 'int64_val', UINT64: 'uint64_val', FP16: 'half_val', FP32: 'float_val',
  FP64: 'double_val', BYTES: 'string_val',
};

const DATATYPE_OF_TF = new Map<string, Datatype>(Object.entries(TF_DTYPE).map(([dt, tf]) => [tf, dt as Datatype]));

/** The datatype of a TensorFlow dtype name, for an input's messages. */
function datatypeOf(dtype: string | undefined, input: string): Datatype {
  if (dtype === undefined || dtype === 'DT_INVALID') throw badRequest(`input "${input}": dtype is not set`);
  const dt = DATATYPE_OF_TF.get(dtype);
  if (dt) return dt;
  if (/^DT_[A-Z0-9_]+$/.test(dtype)) throw unsupported(`input "${input}": dtype ${dtype} is not supported by ONNX models served here`);
  throw badRequest(`input "${input}": unknown dtype ${dtype}`);
}

function shapeOf(t: TensorProtoMessage, input: string): number[] {
  const shape = t.tensor_shape;
  if (shape?.unknown_rank) throw badRequest(`input "${input}": tensor_shape has unknown_rank set; send the dimensions`);
  return (shape?.dim ?? []).map((d, i) => {
    const size = Number(d.size ?? 0);
    if (!Number.isSafeInteger(size) || size < 0) throw badRequest(`input "${input}": tensor_shape dimension ${i} is ${String(d.size)}, expected a size of 0 or more`);
    return size;
  });
}

/** Reads one input of a Predict request, checked against the model's declaration of it. */
export function decodeTensorProto(t: TensorProtoMessage, spec: TensorSpec): HostTensor {
  const input = spec.name;
  const datatype = datatypeOf(t.dtype, input);
  if (datatype !== spec.datatype) {
    throw badRequest(`input "${input}": dtype ${t.dtype ?? ''} does not match the model's ${TF_DTYPE[spec.datatype]} (${spec.datatype})`);
  }
  const shape = shapeOf(t, input);
  checkShape(spec, shape);
  const count = elementCount(shape);
  const content = t.tensor_content;
  if (content !== undefined && content.length > 0) {
    if (datatype === 'BYTES') throw badRequest(`input "${input}": DT_STRING elements travel in string_val, not tensor_content`);
    const need = count * ELEMENT_SIZE[datatype];
    if (content.length !== need) {
      throw badRequest(`input "${input}": tensor_content has ${content.length} bytes, but shape ${fmtShape(shape)} of ${t.dtype ?? ''} needs ${need}`);
    }
    return { name: input, datatype, shape, data: decodeBinaryTensor(content, datatype, count, input) };
  }
  return { name: input, datatype, shape, data: decodeTyped(t, datatype, shape, input) };
}

function decodeTyped(t: TensorProtoMessage, datatype: Datatype, shape: number[], input: string): TensorData {
  const field = FIELD[datatype];
  const given = (t[field] ?? []) as readonly unknown[];
  const count = elementCount(shape);
  let values = given;
  if (given.length !== count) {
    // TensorFlow fills the shape with a lone value (tensor.proto, version_number 0).
    if (given.length === 1 && count > 1) values = new Array<unknown>(count).fill(given[0]);
    else if (given.length === 0) throw badRequest(`input "${input}": no values; a ${TF_DTYPE[datatype]} tensor carries them in ${field} or tensor_content`);
    else throw badRequest(`input "${input}": ${field} has ${given.length} values, but shape ${fmtShape(shape)} needs ${count}`);
  }
  if (datatype === 'FP32') return new Float32Array(values as number[]);
  if (datatype === 'FP64') return new Float64Array(values as number[]);
  if (datatype === 'BYTES') return (values as Buffer[]).map((b, i) => bytesToText(b, i, input));
  if (datatype === 'FP16') {
    const out = new Uint16Array(count);
    values.forEach((v, i) => {
      if (typeof v !== 'number' || v < 0 || v > 0xffff) throw badRequest(`input "${input}": half_val element ${i} is ${String(v)}, not the bits of an IEEE half (0 to 65535)`);
      out[i] = v;
    });
    return out;
  }
  return decodeJson(values, datatype, { input }).data;
}
