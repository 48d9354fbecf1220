/**
 * TensorFlow Serving REST v1 `:predict` bodies. v1 carries no datatypes, so every
 * value is read as the model's declared type. Row format (`instances`) stacks the
 * instances along a new first (batch) dimension; columnar format (`inputs`) gives
 * each tensor whole. `{"b64": "..."}` objects carry bytes.
 */
import { badRequest } from '../errors.js';
import type { HostTensor, TensorSpec } from '../runtime/tensor.js';
import { decodeJson, encodeJsonNested, fmtShape, isB64Object } from './json-data.js';
import type { JsonValue } from './json-data.js';
import { checkShape } from './v2.js';

export type V1Format = 'row' | 'columnar';

export interface V1PredictRequest {
  format: V1Format;
  signatureName: string | undefined;
  /** One tensor per model input, in the model's declared order. */
  inputs: HostTensor[];
}

export type V1PredictResponse = { predictions: JsonValue[] } | { outputs: JsonValue };

type Obj = Record<string, unknown>;

/** Validates a parsed `:predict` body against the model's inputs and decodes it. */
export function parseV1Request(json: unknown, specs: readonly TensorSpec[]): V1PredictRequest {
  if (!isPlainObject(json)) throw badRequest('the request body must be a JSON object');
  const signatureName = json.signature_name;
  if (signatureName !== undefined && typeof signatureName !== 'string') {
    throw badRequest('"signature_name" must be a string');
  }
  const row = json.instances !== undefined;
  if (row === (json.inputs !== undefined)) {
    throw badRequest('send exactly one of "instances" (row format) or "inputs" (columnar format)');
  }
  const inputs = row ? rowInputs(json.instances, specs) : columnarInputs(json.inputs, specs);
  return { format: row ? 'row' : 'columnar', signatureName, inputs };
}

/** Not an array: neither a JS array nor a Float64Array the fast reader made of one (parseV1Json). */
function isPlainObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Float64Array);
}

/** An object keyed by input name, as opposed to a value (a `{"b64"}` object is a value). */
function isNamed(v: unknown, specs: readonly TensorSpec[]): v is Obj {
  return isPlainObject(v) && !(isB64Object(v) && !specs.some((s) => s.name === 'b64'));
}

function names(specs: readonly TensorSpec[]): string {
  return specs.map((s) => `"${s.name}"`).join(', ');
}

function rowInputs(raw: unknown, specs: readonly TensorSpec[]): HostTensor[] {
  // A bare list of numbers (a single-input model with a 1-D input) may come as the fast reader's Float64Array.
  const instances = raw instanceof Float64Array ? Array.from(raw) : raw;
  if (!Array.isArray(instances) || instances.length === 0) {
    throw badRequest('"instances" must be a non-empty list');
  }
  const only = specs.length === 1 ? specs[0] : undefined;
  // A single-input model may take bare values: the list of instances already is the batch.
  if (only && !isNamed(instances[0], specs)) return [decodeInput(instances, only, 'instances')];
  instances.forEach((inst, k) => {
    if (!isNamed(inst, specs)) {
      throw badRequest(`instance ${k} must be an object keyed by input name (${names(specs)})`);
    }
    checkKeys(inst, specs, `instance ${k}`);
  });
  return specs.map((s) => decodeInput(instances.map((inst: Obj) => inst[s.name]), s, 'instances'));
}

function columnarInputs(raw: unknown, specs: readonly TensorSpec[]): HostTensor[] {
  if (isNamed(raw, specs)) {
    checkKeys(raw, specs, '"inputs"');
    return specs.map((s) => decodeInput(raw[s.name], s, '"inputs"'));
  }
  const only = specs.length === 1 ? specs[0] : undefined;
  if (!only) throw badRequest(`"inputs" must be an object keyed by input name (${names(specs)})`);
  return [decodeInput(raw, only, '"inputs"')];
}

function checkKeys(obj: Obj, specs: readonly TensorSpec[], where: string): void {
  for (const key of Object.keys(obj)) {
    if (!specs.some((s) => s.name === key)) {
      throw badRequest(`unknown input "${key}" in ${where}; the model's inputs are ${names(specs)}`);
    }
  }
  for (const s of specs) {
    if (obj[s.name] === undefined) throw badRequest(`input "${s.name}" is missing from ${where}`);
  }
}

function decodeInput(value: unknown, spec: TensorSpec, where: string): HostTensor {
  if (value === undefined) throw badRequest(`input "${spec.name}" is missing from ${where}`);
  const { data, shape } = decodeJson(value, spec.datatype, { input: spec.name, b64: true });
  checkShape(spec, shape);
  return { name: spec.name, datatype: spec.datatype, shape, data };
}

/** TF Serving writes string outputs whose name ends in `_bytes` as `{"b64": ...}`. */
function toJson(t: HostTensor): JsonValue {
  return encodeJsonNested(t.datatype, t.data, t.shape, { b64: t.name.endsWith('_bytes') });
}

/** Builds the `:predict` response in the request's format. */
export function encodeV1Response(format: V1Format, outputs: readonly HostTensor[]): V1PredictResponse {
  const first = outputs[0];
  if (format === 'columnar') {
    if (outputs.length === 1 && first) return { outputs: toJson(first) };
    return { outputs: Object.fromEntries(outputs.map((t) => [t.name, toJson(t)])) };
  }
  if (!first) return { predictions: [] };
  const batch = first.shape[0];
  for (const t of outputs) {
    // Row format splits every output along dimension 0, so all must share it.
    if (t.shape.length === 0 || t.shape[0] !== batch) {
      throw badRequest(
        `output "${t.name}" has shape ${fmtShape(t.shape)}, which cannot be split into ${batch ?? 0} ` +
          `instances like output "${first.name}" ${fmtShape(first.shape)}; use the columnar "inputs" format`,
      );
    }
  }
  if (outputs.length === 1) return { predictions: toJson(first) as JsonValue[] };
  const columns = outputs.map((t) => toJson(t) as JsonValue[]);
  const predictions = Array.from({ length: batch ?? 0 }, (_, i) =>
    Object.fromEntries(outputs.map((t, k) => [t.name, columns[k]?.[i] ?? null])),
  );
  return { predictions };
}
