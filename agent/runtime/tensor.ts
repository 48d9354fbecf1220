/**
 * The agent's in-memory tensor: what the HTTP codecs produce and consume and
 * what the runtime hands to ONNX Runtime. `data` holds exactly the array type
 * onnxruntime-node uses for the element type, so no copy is needed at the
 * runtime boundary.
 */

/** Open Inference Protocol (KServe v2) datatypes. */
export const DATATYPES = [
  'BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64',
  'FP16', 'FP32', 'FP64', 'BYTES',
] as const;
export type Datatype = (typeof DATATYPES)[number];

/** onnxruntime-node element types (`Tensor.type`). */
export type OrtType =
  | 'bool' | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'int8' | 'int16' | 'int32' | 'int64'
  | 'float16' | 'float32' | 'float64' | 'string';

/**
 * Element storage per datatype:
 * BOOL → Uint8Array (0/1), FP16 → Uint16Array (IEEE half bits), INT64/UINT64 →
 * BigInt64Array/BigUint64Array, BYTES → string[] (UTF-8 text, as ONNX strings).
 */
export type TensorData =
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
  | BigInt64Array | BigUint64Array | Float32Array | Float64Array | string[];

export interface HostTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: TensorData;
}

/** A model input or output as the model declares it; `-1` marks a dynamic dimension. */
export interface TensorSpec {
  name: string;
  datatype: Datatype;
  /** -1 for a dynamic (symbolic or unknown) dimension. */
  shape: number[];
}

export const ORT_TYPE: Record<Datatype, OrtType> = {
  BOOL: 'bool', UINT8: 'uint8', UINT16: 'uint16', UINT32: 'uint32', UINT64: 'uint64',
  INT8: 'int8', INT16: 'int16', INT32: 'int32', INT64: 'int64',
  FP16: 'float16', FP32: 'float32', FP64: 'float64', BYTES: 'string',
};

export const DATATYPE_OF: Record<OrtType, Datatype> = {
  bool: 'BOOL', uint8: 'UINT8', uint16: 'UINT16', uint32: 'UINT32', uint64: 'UINT64',
  int8: 'INT8', int16: 'INT16', int32: 'INT32', int64: 'INT64',
  float16: 'FP16', float32: 'FP32', float64: 'FP64', string: 'BYTES',
};

/** Bytes per element in the binary tensor extension; BYTES is variable (length-prefixed). */
export const ELEMENT_SIZE: Record<Exclude<Datatype, 'BYTES'>, number> = {
  BOOL: 1, UINT8: 1, INT8: 1, UINT16: 2, INT16: 2, FP16: 2,
  UINT32: 4, INT32: 4, FP32: 4, UINT64: 8, INT64: 8, FP64: 8,
};

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
