/**
 * KServe v2's gRPC API (inference.GRPCInferenceService, grpc_predict_v2.proto),
 * as Triton serves it: reading requests and shaping answers; the metadata
 * calls reuse the HTTP API's, and serving/inference-path.ts runs the model.
 */
import { EdgefleetError, badRequest, unsupported } from '../errors.js';
import { v2Metadata, v2ModelReady } from '../http/model-info.js';
import type { PreparedInfer } from '../serving/inference-path.js';
import type { ModelRegistry, Selector } from '../serving/registry.js';
import type { Servable } from '../serving/servable.js';
import { encodeModelInferResponse, type ModelInferResponseBytes } from './kserve-response.js';
import { decodeInferInput, needsRaw, type InferParameterMessage, type InferTensorMessage } from './kserve-tensor.js';

export interface ModelInferRequestMessage {
  model_name?: string;
  model_version?: string;
  id?: string;
  parameters?: Record<string, InferParameterMessage>;
  inputs?: InferTensorMessage[];
  outputs?: { name?: string; parameters?: Record<string, InferParameterMessage> }[];
  raw_input_contents?: Buffer[];
}

/** The model and version a KServe request names ("" for the version: the one unqualified requests get). */
export function target(name: string | undefined, version: string | undefined): { model: string; selector: Selector } {
  if (!name) throw badRequest('model name is required');
  if (!version) return { model: name, selector: {} };
  if (!/^[1-9][0-9]*$/.test(version) || !Number.isSafeInteger(Number(version))) throw badRequest(`model version "${version}" is not a positive integer`);
  return { model: name, selector: { version: Number(version) } };
}

const quoted = (names: readonly string[]): string => names.map((n) => `"${n}"`).join(', ');

/** A ModelInfer request read against the version it was given. */
export function prepareModelInfer(servable: Servable, request: ModelInferRequestMessage): PreparedInfer<ModelInferResponseBytes> {
  const specs = servable.session.inputs;
  const given = request.inputs ?? [];
  const raw = request.raw_input_contents ?? [];
  if (raw.length > 0 && raw.length !== given.length) {
    throw badRequest(`raw_input_contents has ${raw.length} entries for ${given.length} inputs; send one per input, in the order of "inputs"`);
  }
  const byName = new Map(given.map((t, k) => [t.name ?? '', k]));
  given.forEach((t, k) => {
    if (!t.name) throw badRequest(`inputs[${k}] has no name`);
    if (!specs.some((s) => s.name === t.name)) throw badRequest(`unknown input "${t.name}"; the model's inputs are ${quoted(specs.map((s) => s.name))}`);
    if (byName.get(t.name) !== k) throw badRequest(`input "${t.name}" appears more than once`);
  });
  const inputs = specs.map((spec) => {
    const k = byName.get(spec.name);
    if (k === undefined) throw badRequest(`input "${spec.name}" is missing; the model's inputs are ${quoted(specs.map((s) => s.name))}`);
    return decodeInferInput(given[k] as InferTensorMessage, spec, raw.length > 0 ? raw[k] : undefined);
  });
  const requested = requestedOutputs(request, servable.session.outputs.map((s) => s.name));
  const meta = { model_name: servable.name, model_version: String(servable.version), ...(request.id && { id: request.id }) };
  return {
    inputs,
    outputs: requested,
    answer: (outputs) => {
      // The runtime answers in its own order; the client's order of "outputs" wins.
      const ordered = requested ? requested.map((n) => outputs.find((o) => o.name === n)).filter((o) => o !== undefined) : outputs;
      return encodeModelInferResponse(meta, ordered, needsRaw(raw.length > 0, outputs));
    },
  };
}

function requestedOutputs(request: ModelInferRequestMessage, known: readonly string[]): string[] | undefined {
  const list = request.outputs ?? [];
  if (list.length === 0) return undefined;
  const names: string[] = [];
  list.forEach((o, k) => {
    const name = o.name;
    if (!name) throw badRequest(`outputs[${k}] has no name`);
    if (!known.includes(name)) throw badRequest(`unknown output "${name}"; the model's outputs are ${quoted(known)}`);
    if (names.includes(name)) throw badRequest(`output "${name}" is requested more than once`);
    if (o.parameters?.classification !== undefined) throw unsupported(`output "${name}": the classification extension is not supported`);
    if (o.parameters?.shared_memory_region !== undefined) throw unsupported(`output "${name}": shared-memory tensors are not supported`);
    names.push(name);
  });
  return names;
}

/** ModelReady: false while the version is not ready; an unknown model or version is NOT_FOUND. */
export function modelReady(registry: ModelRegistry, request: { name?: string; version?: string }): { ready: boolean } {
  const { model, selector } = target(request.name, request.version);
  try {
    v2ModelReady(registry, model, selector);
    return { ready: true };
  } catch (err) {
    if (err instanceof EdgefleetError && err.code === 'UNAVAILABLE') return { ready: false };
    throw err;
  }
}

/** ModelMetadata: what GET /v2/models/{name}[/versions/{v}] answers. */
export function modelMetadata(registry: ModelRegistry, request: { name?: string; version?: string }): unknown {
  const { model, selector } = target(request.name, request.version);
  return v2Metadata(registry, model, selector);
}
