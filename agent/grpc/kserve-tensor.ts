/**
 * KServe v2 / Triton gRPC tensors (grpc_predict_v2.proto): an input's elements
 * come in the InferTensorContents field of its datatype, or as raw
 * little-endian bytes in `raw_input_contents` (one entry per input, in order;
 * what tritonclient sends). Answers use `raw_output_contents` when the request
 * used raw inputs (as Triton does) or an output has no typed field (FP16), and
 * typed contents otherwise.
 */
import { badRequest, unsupported } from '../errors.js';
import { bytesToText, decodeJson, fmtShape, show } from '../codec/json-data.js';
import { checkShape, decodeBinaryTensor } from '../codec/v2.js';
import { DATATYPES, ELEMENT_SIZE, elementCount } from '../runtime/tensor.js';
import type { Datatype, HostTensor, TensorData, TensorSpec } from '../runtime/tensor.js';
import { packed64, packedInts, rawBytes, type ProtoWriter } from './proto-writer.js';

export interface InferParameterMessage {
  bool_param?: boolean;
  int64_param?: string;
  string_param?: string;
  parameter_choice?: 'bool_param' | 'int64_param' | 'string_param';
}

export interface TensorContentsMessage {
  bool_contents?: boolean[];
  int_contents?: number[];
  int64_contents?: string[];
  uint_contents?: number[];
  uint64_contents?: string[];
  fp32_contents?: number[];
  fp64_contents?: number[];
  bytes_contents?: Buffer[];
}

export interface InferTensorMessage {
  name?: string;
  datatype?: string;
  shape?: (string | number)[];
  parameters?: Record<string, InferParameterMessage>;
  contents?: TensorContentsMessage;
}

type ContentsField = keyof TensorContentsMessage;

/** The contents field of each datatype (grpc_predict_v2.proto's comments); FP16 has none. */
const FIELD: Record<Datatype, ContentsField | undefined> = {
  BOOL: 'bool_contents', INT8: 'int_contents', INT16: 'int_contents', INT32: 'int_contents', INT64: 'int64_contents',
  UINT8: 'uint_contents', UINT16: 'uint_contents', UINT32: 'uint_contents', UINT64: 'uint64_contents',
  FP32: 'fp32_contents', FP64: 'fp64_contents', BYTES: 'bytes_contents', FP16: undefined,
};

export function parseDatatype(raw: string | undefined, input: string): Datatype {
  if (!raw) throw badRequest(`input "${input}": datatype is not set`);
  if ((DATATYPES as readonly string[]).includes(raw)) return raw as Datatype;
  // BF16 is in the v2 spec but ONNX Runtime's JS API has no bfloat16 tensors.
  if (raw === 'BF16') throw unsupported(`input "${input}": datatype BF16 is not supported`);
  throw badRequest(`input "${input}": unknown datatype ${show(raw)}`);
}

function parseShape(raw: readonly (string | number)[] | undefined, input: string): number[] {
  return (raw ?? []).map((d) => {
    const n = Number(d);
    if (!Number.isSafeInteger(n) || n < 0) throw badRequest(`input "${input}": shape ${show(raw)} must hold non-negative integers`);
    return n;
  });
}

/** Reads one input: its head against the model's declaration, then its elements from `raw` or its contents. */
export function decodeInferInput(t: InferTensorMessage, spec: TensorSpec, raw: Buffer | undefined): HostTensor {
  const input = spec.name;
  const datatype = parseDatatype(t.datatype, input);
  if (datatype !== spec.datatype) throw badRequest(`input "${input}": datatype ${datatype} does not match the model's ${spec.datatype}`);
  const shape = parseShape(t.shape, input);
  checkShape(spec, shape);
  if (t.parameters?.shared_memory_region !== undefined) throw unsupported(`input "${input}": shared-memory tensors are not supported`);
  const count = elementCount(shape);
  if (raw !== undefined) {
    if (hasContents(t.contents)) throw badRequest(`input "${input}": has both contents and raw_input_contents; send one`);
    if (datatype !== 'BYTES' && raw.length !== count * ELEMENT_SIZE[datatype]) {
      throw badRequest(
        `input "${input}": raw_input_contents has ${raw.length} bytes, but shape ${fmtShape(shape)} of ${datatype} needs ${count * ELEMENT_SIZE[datatype]}`,
      );
    }
    return { name: input, datatype, shape, data: decodeBinaryTensor(raw, datatype, count, input) };
  }
  return { name: input, datatype, shape, data: decodeContents(t.contents, datatype, shape, input) };
}

function hasContents(c: TensorContentsMessage | undefined): boolean {
  return c !== undefined && Object.values(c).some((v) => Array.isArray(v) && v.length > 0);
}

function decodeContents(contents: TensorContentsMessage | undefined, datatype: Datatype, shape: number[], input: string): TensorData {
  const field = FIELD[datatype];
  const count = elementCount(shape);
  if (field === undefined) {
    if (count === 0) return new Uint16Array(0);
    throw badRequest(`input "${input}": ${datatype} has no contents field; send its bytes in raw_input_contents`);
  }
  const values = (contents?.[field] ?? []) as readonly unknown[];
  if (values.length !== count) {
    const other = contents && (Object.keys(contents) as ContentsField[]).find((k) => k !== field && (contents[k]?.length ?? 0) > 0);
    if (values.length === 0 && other) throw badRequest(`input "${input}": ${datatype} elements go in contents.${field}, not ${other}`);
    throw badRequest(`input "${input}": contents.${field} has ${values.length} elements, but shape ${fmtShape(shape)} needs ${count}`);
  }
  if (datatype === 'FP32') return new Float32Array(values as number[]);
  if (datatype === 'FP64') return new Float64Array(values as number[]);
  if (datatype === 'BYTES') return (values as Buffer[]).map((b, i) => bytesToText(b, i, input));
  return decodeJson(values, datatype, { input }).data;
}

/** Whether an answer must use raw_output_contents: the request did, or an output has no typed field. */
export function needsRaw(requestRaw: boolean, outputs: readonly HostTensor[]): boolean {
  return requestRaw || outputs.some((t) => FIELD[t.datatype] === undefined);
}

/** InferTensorContents field numbers (grpc_predict_v2.proto). */
const FIELD_NUMBER: Record<ContentsField, number> = {
  bool_contents: 1, int_contents: 2, int64_contents: 3, uint_contents: 4, uint64_contents: 5, fp32_contents: 6, fp64_contents: 7, bytes_contents: 8,
};

/** One output's InferTensorContents: its elements in the typed field of its datatype (not FP16, which has none). */
export function writeContents(out: ProtoWriter, t: HostTensor): void {
  const field = FIELD[t.datatype];
  if (field === undefined) throw new Error(`${t.datatype} has no InferTensorContents field`);
  const n = FIELD_NUMBER[field];
  const data = t.data;
  switch (t.datatype) {
    case 'FP32':
    case 'FP64':
    case 'BOOL': // packed bool: one varint byte, 0 or 1, each
      return out.bytes(n, rawBytes(data as Float32Array));
    case 'INT64':
    case 'UINT64':
      return packed64(out, n, data as BigInt64Array);
    case 'BYTES':
      for (const s of data as string[]) out.string(n, s);
      return;
    case 'INT8':
    case 'INT16':
    case 'INT32':
    case 'UINT8':
    case 'UINT16':
    case 'UINT32':
      return packedInts(out, n, data as Int32Array);
    case 'FP16':
      return;
  }
}
