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
import { checkShape, decodeBinaryTensor, encodeBinaryTensor } from '../codec/v2.js';
import { DATATYPES, ELEMENT_SIZE, elementCount } from '../runtime/tensor.js';
import type { Datatype, HostTensor, TensorData, TensorSpec } from '../runtime/tensor.js';

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

export interface InferOutputMessage {
  name: string;
  datatype: Datatype;
  shape: string[];
  contents?: TensorContentsMessage;
}

/** Whether an answer must use raw_output_contents: the request did, or an output has no typed field. */
export function needsRaw(requestRaw: boolean, outputs: readonly HostTensor[]): boolean {
  return requestRaw || outputs.some((t) => FIELD[t.datatype] === undefined);
}

/** One output of a ModelInfer answer; with `raw`, its bytes go to raw_output_contents in the same order. */
export function encodeInferOutput(t: HostTensor, raw: Buffer[] | undefined): InferOutputMessage {
  const head = { name: t.name, datatype: t.datatype, shape: t.shape.map(String) };
  if (raw) {
    raw.push(encodeBinaryTensor(t.datatype, t.data));
    return head;
  }
  const field = FIELD[t.datatype] as ContentsField;
  const data = t.data;
  let values: unknown[];
  if (t.datatype === 'BYTES') values = (data as string[]).map((s) => Buffer.from(s, 'utf8'));
  else if (t.datatype === 'INT64' || t.datatype === 'UINT64') values = Array.from(data as BigInt64Array, String);
  else if (t.datatype === 'BOOL') values = Array.from(data as Uint8Array, Boolean);
  else values = Array.from(data as Float32Array);
  return { ...head, contents: { [field]: values } };
}
