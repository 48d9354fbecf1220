/**
 * Open Inference Protocol (KServe v2) infer requests and responses, as Triton
 * speaks them, including Triton's binary tensor extension: the body is a JSON
 * header of `Inference-Header-Content-Length` bytes followed by raw little-endian
 * tensor bytes, one slice per input that sets `parameters.binary_data_size`.
 */
import { Buffer } from 'node:buffer';
import { EdgefleetError, badRequest, unsupported } from '../errors.js';
import { DATATYPES, ELEMENT_SIZE, elementCount } from '../runtime/tensor.js';
import type { Datatype, HostTensor, TensorData, TensorSpec } from '../runtime/tensor.js';
import { parseV2Json } from './fast-json.js';
import { bytesToText, decodeJson, decodeNumbers, encodeJsonFlatText, fmtShape, show } from './json-data.js';

/** What the codecs need to know about a model. */
export interface ModelIo {
  inputs: readonly TensorSpec[];
  outputs: readonly TensorSpec[];
}

export interface V2RequestedOutput {
  name: string;
  /** Send this output as raw bytes after the JSON header. */
  binary: boolean;
}

export interface V2OutputSelection {
  /** Outputs the client asked for, in its order; undefined means all, in the runtime's order. */
  outputs: V2RequestedOutput[] | undefined;
  /** Request `parameters.binary_data_output`: the default for every output. */
  binaryOutput: boolean;
}

export interface V2InferRequest extends V2OutputSelection {
  id?: string;
  /** One tensor per model input, in the model's declared order. */
  inputs: HostTensor[];
}

type Obj = Record<string, unknown>;

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function optionalObject(v: unknown, what: string): Obj | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) throw badRequest(`${what} must be a JSON object`);
  return v;
}

function names(specs: readonly { name: string }[]): string {
  return specs.map((s) => `"${s.name}"`).join(', ');
}

/**
 * Reads an infer request body: the JSON header (the whole body without
 * `Inference-Header-Content-Length`), then the binary bytes after it (a view,
 * not a copy), validated against the model. Numeric `inputs[k].data` arrays
 * are read by fast-json.ts into Float64Arrays (views of its scratch, consumed
 * here before anything else parses), never into JS arrays; a body it cannot
 * read goes to JSON.parse, with the same result and errors.
 */
export function parseV2Body(body: Buffer, headerLength: number | string | undefined, model: ModelIo): V2InferRequest {
  const { json, binary } = split(body, headerLength);
  return parseV2Request(json, model, binary);
}

function split(body: Buffer, headerLength: number | string | undefined): { json: unknown; binary: Buffer | undefined } {
  if (headerLength === undefined) return { json: parseFast(body, body.length), binary: undefined };
  const n = typeof headerLength === 'number' ? headerLength : /^\d+$/.test(headerLength) ? Number(headerLength) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) {
    throw badRequest(`Inference-Header-Content-Length ${show(headerLength)} is not a byte count`);
  }
  if (n > body.length) {
    throw badRequest(`Inference-Header-Content-Length ${n} is longer than the ${body.length}-byte body`);
  }
  return { json: parseFast(body, n), binary: body.subarray(n) };
}

function parseFast(body: Buffer, end: number): unknown {
  return parseV2Json(body, end) ?? parseJson(body, end);
}

function parseJson(body: Buffer, end: number): unknown {
  try {
    return JSON.parse(body.toString('utf8', 0, end));
  } catch (err) {
    throw badRequest(`malformed JSON: ${(err as Error).message}`);
  }
}

/** Validates a parsed v2 infer request against the model and decodes its tensors. */
export function parseV2Request(json: unknown, model: ModelIo, binary?: Buffer): V2InferRequest {
  if (!isObject(json)) throw badRequest('the request body must be a JSON object');
  const { id } = json;
  if (id !== undefined && typeof id !== 'string') throw badRequest('"id" must be a string');
  const params = optionalObject(json.parameters, 'request "parameters"');
  const binaryOutput = params?.binary_data_output ?? false;
  if (typeof binaryOutput !== 'boolean') throw badRequest('parameters.binary_data_output must be a boolean');
  // A model without inputs (a constant, a generator) is asked with "inputs": [].
  if (!Array.isArray(json.inputs) || (json.inputs.length === 0 && model.inputs.length > 0)) throw badRequest('"inputs" must be a non-empty array');
  const inputs = decodeInputs(json.inputs, model.inputs, binary);
  const outputs = parseRequestedOutputs(json.outputs, model.outputs, binaryOutput);
  return { ...(id !== undefined && { id }), inputs, outputs, binaryOutput };
}

function decodeInputs(raw: unknown[], specs: readonly TensorSpec[], binary: Buffer | undefined): HostTensor[] {
  const byName = new Map<string, HostTensor>();
  const reader = new BinaryReader(binary);
  raw.forEach((item, k) => {
    const head = parseInputHead(item, k, specs);
    const { name, datatype, shape } = head;
    if (byName.has(name)) throw badRequest(`input "${name}" appears more than once`);
    const data =
      head.binarySize !== undefined
        ? reader.take(head, head.binarySize)
        : decodeJsonInput(head.data, head);
    byName.set(name, { name, datatype, shape, data });
  });
  reader.finish();
  const missing = specs.filter((s) => !byName.has(s.name));
  if (missing.length > 0) {
    throw badRequest(`missing input ${names(missing)}; the model's inputs are ${names(specs)}`);
  }
  return specs.map((s) => byName.get(s.name) as HostTensor);
}

interface InputHead {
  name: string;
  datatype: Datatype;
  shape: number[];
  binarySize: number | undefined;
  data: unknown;
}

function parseInputHead(item: unknown, k: number, specs: readonly TensorSpec[]): InputHead {
  if (!isObject(item) || typeof item.name !== 'string') {
    throw badRequest(`inputs[${k}] must be an object with a string "name"`);
  }
  const name = item.name;
  const spec = specs.find((s) => s.name === name);
  if (!spec) throw badRequest(`unknown input "${name}"; the model's inputs are ${names(specs)}`);
  const datatype = parseDatatype(item.datatype, name);
  if (datatype !== spec.datatype) {
    throw badRequest(`input "${name}": datatype ${datatype} does not match the model's ${spec.datatype}`);
  }
  const shape = parseShape(item.shape, name);
  checkShape(spec, shape);
  const params = optionalObject(item.parameters, `input "${name}": "parameters"`);
  if (params?.shared_memory_region !== undefined) {
    throw unsupported(`input "${name}": shared-memory tensors are not supported`);
  }
  const binarySize = params?.binary_data_size;
  if (binarySize !== undefined && (!Number.isSafeInteger(binarySize) || (binarySize as number) < 0)) {
    throw badRequest(`input "${name}": binary_data_size ${show(binarySize)} is not a byte count`);
  }
  if (binarySize !== undefined && item.data !== undefined) {
    throw badRequest(`input "${name}": has both "data" and parameters.binary_data_size; send one`);
  }
  if (binarySize === undefined && item.data === undefined) {
    throw badRequest(`input "${name}": has neither "data" nor parameters.binary_data_size`);
  }
  return { name, datatype, shape, binarySize: binarySize as number | undefined, data: item.data };
}

function parseDatatype(raw: unknown, name: string): Datatype {
  if (typeof raw !== 'string') throw badRequest(`input "${name}": "datatype" must be a string`);
  if ((DATATYPES as readonly string[]).includes(raw)) return raw as Datatype;
  // BF16 is in the v2 spec but ONNX Runtime's JS API has no bfloat16 tensors.
  if (raw === 'BF16') throw unsupported(`input "${name}": datatype BF16 is not supported`);
  throw badRequest(`input "${name}": unknown datatype ${show(raw)}`);
}

function parseShape(raw: unknown, name: string): number[] {
  if (!Array.isArray(raw) || !raw.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    throw badRequest(`input "${name}": "shape" must be an array of non-negative integers, got ${show(raw)}`);
  }
  return raw as number[];
}

/** Rank and every fixed (non -1) dimension must match the model's declaration. */
export function checkShape(spec: TensorSpec, shape: readonly number[]): void {
  const want = spec.shape;
  if (shape.length !== want.length) {
    throw badRequest(
      `input "${spec.name}": shape ${fmtShape(shape)} has rank ${shape.length}, ` +
        `but the model expects rank ${want.length} ${fmtShape(want)}`,
    );
  }
  want.forEach((d, i) => {
    if (d !== -1 && d !== shape[i]) {
      throw badRequest(
        `input "${spec.name}": shape ${fmtShape(shape)} has ${shape[i]} in dimension ${i}, ` +
          `but the model expects ${d} ${fmtShape(want)}`,
      );
    }
  });
}

function decodeJsonInput(data: unknown, head: InputHead): TensorData {
  // Only parseV2Body makes these (JSON.parse never does): a flat array of numbers.
  if (data instanceof Float64Array) return decodeNumbers(data, head.datatype, { input: head.name, expectedShape: head.shape }).data;
  if (!Array.isArray(data)) throw badRequest(`input "${head.name}": "data" must be an array`);
  return decodeJson(data, head.datatype, { input: head.name, expectedShape: head.shape }).data;
}

/** Hands out consecutive slices of the binary section and checks they cover it exactly. */
class BinaryReader {
  private offset = 0;
  private readonly used: string[] = [];
  constructor(private readonly bytes: Buffer | undefined) {}

  take(head: InputHead, size: number): TensorData {
    if (!this.bytes) {
      throw badRequest(
        `input "${head.name}": parameters.binary_data_size is set, but the request has no binary ` +
          'section (Inference-Header-Content-Length header missing)',
      );
    }
    const left = this.bytes.length - this.offset;
    if (size > left) {
      throw badRequest(
        `input "${head.name}": binary_data_size ${size} exceeds the ${left} bytes left after the JSON header`,
      );
    }
    const slice = this.bytes.subarray(this.offset, this.offset + size);
    this.offset += size;
    this.used.push(head.name);
    return decodeBinaryTensor(slice, head.datatype, elementCount(head.shape), head.name);
  }

  finish(): void {
    const total = this.bytes?.length ?? 0;
    if (this.offset === total) return;
    const whose = this.used.length > 0 ? `binary_data_size of input ${this.used.map((n) => `"${n}"`).join(', ')} adds up to ${this.offset}` : 'no input sets parameters.binary_data_size';
    throw badRequest(`${whose}, but ${total} bytes follow the JSON header`);
  }
}

type NumericData = Exclude<TensorData, string[]>;
interface TypedCtor {
  new (length: number): NumericData;
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): NumericData;
  readonly BYTES_PER_ELEMENT: number;
}

const ARRAY_TYPE: Record<Exclude<Datatype, 'BYTES'>, TypedCtor> = {
  BOOL: Uint8Array, UINT8: Uint8Array, INT8: Int8Array, UINT16: Uint16Array, INT16: Int16Array,
  FP16: Uint16Array, UINT32: Uint32Array, INT32: Int32Array, FP32: Float32Array,
  UINT64: BigUint64Array, INT64: BigInt64Array, FP64: Float64Array,
};

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Raw little-endian bytes → element data: a view over `bytes` when its offset suits
 * the element alignment, else one copy. The view shares memory with the request body.
 */
export function decodeBinaryTensor(bytes: Buffer, datatype: Datatype, count: number, input: string): TensorData {
  if (datatype === 'BYTES') return decodeBinaryStrings(bytes, count, input);
  const size = ELEMENT_SIZE[datatype];
  if (bytes.length !== count * size) {
    throw badRequest(
      `input "${input}": binary_data_size ${bytes.length} does not match ${count} ${datatype} ` +
        `elements of ${size} bytes (${count * size})`,
    );
  }
  // Typed arrays use host order; every board we target is little-endian.
  if (!LITTLE_ENDIAN && size > 1) throw unsupported(`input "${input}": binary tensors on a big-endian host`);
  const Ctor = ARRAY_TYPE[datatype];
  let data: NumericData;
  if (bytes.byteOffset % size === 0) {
    data = new Ctor(bytes.buffer, bytes.byteOffset, count);
  } else {
    data = new Ctor(count);
    new Uint8Array(data.buffer, 0, bytes.length).set(bytes);
  }
  if (datatype === 'BOOL') {
    const i = (data as Uint8Array).findIndex((b) => b > 1);
    if (i >= 0) throw badRequest(`input "${input}": BOOL element ${i} is byte ${data[i]}, expected 0 or 1`);
  }
  return data;
}

/** BYTES elements: each a 4-byte little-endian length, then that many bytes. */
function decodeBinaryStrings(bytes: Buffer, count: number, input: string): string[] {
  // Every element takes at least its 4-byte length: check before allocating for a shape that lies.
  if (count > bytes.length / 4) {
    throw badRequest(`input "${input}": ${count} BYTES elements need at least ${count * 4} bytes, binary_data_size is ${bytes.length}`);
  }
  const out = new Array<string>(count);
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 4 > bytes.length) {
      throw badRequest(`input "${input}": BYTES element ${i}'s 4-byte length runs past binary_data_size ${bytes.length}`);
    }
    const len = bytes.readUInt32LE(p);
    p += 4;
    if (len > bytes.length - p) {
      throw badRequest(`input "${input}": BYTES element ${i} claims ${len} bytes, only ${bytes.length - p} remain`);
    }
    out[i] = bytesToText(bytes.subarray(p, p + len), i, input);
    p += len;
  }
  if (p !== bytes.length) {
    throw badRequest(`input "${input}": ${bytes.length - p} bytes left over after ${count} BYTES elements`);
  }
  return out;
}

/** Element data as raw little-endian bytes; a view, except BYTES which must be framed. */
export function encodeBinaryTensor(datatype: Datatype, data: TensorData): Buffer {
  if (datatype !== 'BYTES') {
    const d = data as NumericData;
    return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  }
  const strings = data as string[];
  let total = 0;
  for (const s of strings) total += 4 + Buffer.byteLength(s, 'utf8');
  const out = Buffer.allocUnsafe(total);
  let p = 0;
  for (const s of strings) {
    const len = out.write(s, p + 4, 'utf8');
    out.writeUInt32LE(len, p);
    p += 4 + len;
  }
  return out;
}

function parseRequestedOutputs(
  raw: unknown,
  specs: readonly TensorSpec[],
  binaryOutput: boolean,
): V2RequestedOutput[] | undefined {
  if (raw === undefined) return undefined;
  if (!Array.isArray(raw)) throw badRequest('"outputs" must be an array');
  if (raw.length === 0) return undefined; // Triton: an empty list means all outputs
  const seen = new Set<string>();
  return raw.map((o, k) => {
    if (!isObject(o) || typeof o.name !== 'string') throw badRequest(`outputs[${k}] must be an object with a string "name"`);
    const name = o.name;
    if (!specs.some((s) => s.name === name)) {
      throw badRequest(`unknown output "${name}"; the model's outputs are ${names(specs)}`);
    }
    if (seen.has(name)) throw badRequest(`output "${name}" is requested more than once`);
    seen.add(name);
    const p = optionalObject(o.parameters, `output "${name}": "parameters"`);
    if (p?.classification !== undefined) throw unsupported(`output "${name}": the classification extension is not supported`);
    if (p?.shared_memory_region !== undefined) throw unsupported(`output "${name}": shared-memory tensors are not supported`);
    const binary = p?.binary_data ?? binaryOutput;
    if (typeof binary !== 'boolean') throw badRequest(`output "${name}": parameters.binary_data must be a boolean`);
    return { name, binary };
  });
}

export interface V2ResponseMeta {
  modelName: string;
  modelVersion: string;
  id?: string;
}

export interface V2ResponseParts {
  /** The JSON header as text: the whole body when `chunks` is empty. */
  header: string;
  /** Raw bytes of the binary outputs, in order, to follow the header. */
  chunks: Buffer[];
}

/**
 * The v2 response: a JSON header, then the binary outputs' bytes (Triton's
 * binary tensor extension). The header is written as text directly rather
 * than as objects for JSON.stringify: it is exactly
 * `JSON.stringify({model_name, model_version, id?, outputs: [{name, datatype,
 * shape, data | parameters: {binary_data_size}}]})`.
 */
export function encodeV2ResponseParts(
  meta: V2ResponseMeta,
  outputs: readonly HostTensor[],
  selection: V2OutputSelection,
): V2ResponseParts {
  const chunks: Buffer[] = [];
  let text = `{"model_name":${quoted(meta.modelName)},"model_version":${quoted(meta.modelVersion)}`;
  if (meta.id !== undefined) text += `,"id":${JSON.stringify(meta.id)}`;
  text += ',"outputs":[';
  const requested = selection.outputs;
  const n = requested ? requested.length : outputs.length;
  for (let k = 0; k < n; k++) {
    let t: HostTensor;
    let binary: boolean;
    if (requested) {
      const want = requested[k] as V2RequestedOutput;
      const found = outputs.find((o) => o.name === want.name);
      // Requested names were validated against the model, so a gap is ours, not the client's.
      if (!found) throw new EdgefleetError('INTERNAL', `the model produced no output "${want.name}"`);
      t = found;
      binary = want.binary;
    } else {
      t = outputs[k] as HostTensor;
      binary = selection.binaryOutput;
    }
    if (k > 0) text += ',';
    text += `{"name":${quoted(t.name)},"datatype":"${t.datatype}","shape":[${t.shape.join(',')}]`;
    if (!binary) {
      text += `,"data":${encodeJsonFlatText(t.datatype, t.data)}}`;
    } else {
      const raw = encodeBinaryTensor(t.datatype, t.data);
      chunks.push(raw);
      text += `,"parameters":{"binary_data_size":${raw.length}}}`;
    }
  }
  return { header: `${text}]}`, chunks };
}

/** JSON strings of the few names every answer repeats (model, version, outputs), made once. */
const QUOTED = new Map<string, string>();

function quoted(s: string): string {
  let q = QUOTED.get(s);
  if (q === undefined) {
    if (QUOTED.size >= 4096) QUOTED.clear(); // names come from loaded models, but stay bounded
    q = JSON.stringify(s);
    QUOTED.set(s, q);
  }
  return q;
}
