/**
 * TensorFlow Serving's gRPC API: PredictionService (Predict, GetModelMetadata)
 * and ModelService (GetModelStatus), as tensorflow_serving/apis/*.proto define
 * them. Reading and answering only; serving/inference-path.ts runs the model.
 */
import { badRequest } from '../errors.js';
import { v1Metadata, v1Status } from '../http/model-info.js';
import type { PreparedInfer } from '../serving/inference-path.js';
import type { ModelRegistry, Selector } from '../serving/registry.js';
import type { Servable } from '../serving/servable.js';
import { encodePredictResponse } from './tf-response.js';
import { decodeTensorProto, type TensorProtoMessage } from './tf-tensor.js';

export interface ModelSpecMessage {
  name?: string;
  version?: { value?: string | number };
  version_label?: string;
  signature_name?: string;
}

export interface PredictRequestMessage {
  model_spec?: ModelSpecMessage;
  inputs?: Record<string, TensorProtoMessage>;
  output_filter?: string[];
}

/** A PredictResponse already in protobuf bytes (tf-response.ts); protos.ts passes it through. */
export type PredictResponseBytes = Buffer;

/** The only signature an ONNX model has, under TensorFlow's default name. */
const SIGNATURE = 'serving_default';
const SIGNATURE_DEF_MAP = 'type.googleapis.com/tensorflow.serving.SignatureDefMap';

/** The model and version a ModelSpec names. */
export function specTarget(spec: ModelSpecMessage | undefined): { model: string; selector: Selector } {
  if (!spec?.name) throw badRequest('model_spec.name is required');
  const raw = spec.version?.value;
  if (raw !== undefined) {
    const version = Number(raw);
    if (!Number.isSafeInteger(version) || version < 1) throw badRequest(`model_spec.version ${String(raw)} is not a positive integer`);
    return { model: spec.name, selector: { version } };
  }
  if (spec.version_label) return { model: spec.name, selector: { label: spec.version_label } };
  return { model: spec.name, selector: {} };
}

function checkSignature(spec: ModelSpecMessage | undefined): void {
  const name = spec?.signature_name;
  if (name && name !== SIGNATURE) throw badRequest(`model_spec.signature_name "${name}" is not known; ONNX models have one signature, "${SIGNATURE}"`);
}

const quoted = (names: readonly string[]): string => names.map((n) => `"${n}"`).join(', ');

/** A Predict request read against the version it was given. */
export function preparePredict(servable: Servable, request: PredictRequestMessage): PreparedInfer<PredictResponseBytes> {
  checkSignature(request.model_spec);
  const specs = servable.session.inputs;
  const given = request.inputs ?? {};
  for (const key of Object.keys(given)) {
    if (!specs.some((s) => s.name === key)) throw badRequest(`unknown input "${key}"; the model's inputs are ${quoted(specs.map((s) => s.name))}`);
  }
  const inputs = specs.map((spec) => {
    const t = given[spec.name];
    if (!t) throw badRequest(`input "${spec.name}" is missing; the model's inputs are ${quoted(specs.map((s) => s.name))}`);
    return decodeTensorProto(t, spec);
  });
  const filter = request.output_filter ?? [];
  const known = servable.session.outputs.map((s) => s.name);
  filter.forEach((name, k) => {
    if (!known.includes(name)) throw badRequest(`output_filter names unknown output "${name}"; the model's outputs are ${quoted(known)}`);
    if (filter.indexOf(name) !== k) throw badRequest(`output_filter names output "${name}" more than once`);
  });
  return {
    inputs,
    outputs: filter.length > 0 ? filter : undefined,
    answer: (outputs) => encodePredictResponse(servable.name, servable.version, outputs),
  };
}

export interface GetModelMetadataRequestMessage {
  model_spec?: ModelSpecMessage;
  metadata_field?: string[];
}

/** GetModelMetadata: the signature, as GET /v1/models/{name}/metadata gives it, packed in an Any. */
export function modelMetadata(registry: ModelRegistry, request: GetModelMetadataRequestMessage): unknown {
  const { model, selector } = specTarget(request.model_spec);
  checkSignature(request.model_spec);
  for (const field of request.metadata_field ?? []) {
    if (field !== 'signature_def') throw badRequest(`metadata_field "${field}" is not supported; ask for "signature_def"`);
  }
  const rest = v1Metadata(registry, model, selector) as { model_spec: { version: string }; metadata: { signature_def: object } };
  return {
    model_spec: { name: model, version: { value: rest.model_spec.version }, signature_name: '' },
    // protobufjs packs an object with "@type" into google.protobuf.Any as that message.
    metadata: { signature_def: { '@type': SIGNATURE_DEF_MAP, ...rest.metadata.signature_def } },
  };
}

export interface GetModelStatusRequestMessage {
  model_spec?: ModelSpecMessage;
}

/** GetModelStatus: the version states GET /v1/models/{name} reports. */
export function modelStatus(registry: ModelRegistry, request: GetModelStatusRequestMessage): unknown {
  const { model, selector } = specTarget(request.model_spec);
  return v1Status(registry, model, selector);
}
