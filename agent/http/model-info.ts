import { unavailable } from '../errors.js';
import type { ModelRegistry, Selector, VersionStatus } from '../serving/registry.js';
import type { Datatype, TensorSpec } from '../runtime/tensor.js';

/** TensorFlow DataType names of the datatypes (tensorflow/core/framework/types.proto). */
export const TF_DTYPE: Record<Datatype, string> = {
  BOOL: 'DT_BOOL', UINT8: 'DT_UINT8', UINT16: 'DT_UINT16', UINT32: 'DT_UINT32', UINT64: 'DT_UINT64',
  INT8: 'DT_INT8', INT16: 'DT_INT16', INT32: 'DT_INT32', INT64: 'DT_INT64',
  FP16: 'DT_HALF', FP32: 'DT_FLOAT', FP64: 'DT_DOUBLE', BYTES: 'DT_STRING',
};

function tfStatus(s: VersionStatus): unknown {
  return {
    version: String(s.version),
    state: s.state,
    status: s.error ? { error_code: 'UNKNOWN', error_message: s.error } : { error_code: 'OK', error_message: '' },
  };
}

/** GET /v1/models/{name}[/versions/{v}|/labels/{l}]: TensorFlow Serving's GetModelStatus. */
export function v1Status(registry: ModelRegistry, name: string, selector: Selector): unknown {
  const statuses = registry.statuses(name);
  if (selector.version === undefined && selector.label === undefined) return { model_version_status: statuses.map(tfStatus) };
  const version = registry.resolveVersion(name, selector);
  return { model_version_status: statuses.filter((s) => s.version === version).map(tfStatus) };
}

/** Reads the declared inputs and outputs of the version a selector means. */
export function specsOf(registry: ModelRegistry, name: string, selector: Selector): { version: number; inputs: readonly TensorSpec[]; outputs: readonly TensorSpec[] } {
  const servable = registry.acquire(name, selector);
  try {
    return { version: servable.version, inputs: servable.session.inputs, outputs: servable.session.outputs };
  } finally {
    servable.release();
  }
}

function tfSignature(specs: readonly TensorSpec[]): Record<string, unknown> {
  return Object.fromEntries(
    specs.map((s) => [
      s.name,
      { dtype: TF_DTYPE[s.datatype], tensor_shape: { dim: s.shape.map((d) => ({ size: String(d), name: '' })), unknown_rank: false }, name: s.name },
    ]),
  );
}

/** GET /v1/models/{name}/metadata, in TensorFlow Serving's signature_def form. */
export function v1Metadata(registry: ModelRegistry, name: string, selector: Selector): unknown {
  const { version, inputs, outputs } = specsOf(registry, name, selector);
  return {
    model_spec: { name, signature_name: '', version: String(version) },
    metadata: {
      signature_def: {
        signature_def: {
          serving_default: { inputs: tfSignature(inputs), outputs: tfSignature(outputs), method_name: 'tensorflow/serving/predict' },
        },
      },
    },
  };
}

/** GET /v2/models/{name}[/versions/{v}]: Open Inference Protocol model metadata. */
export function v2Metadata(registry: ModelRegistry, name: string, selector: Selector): unknown {
  const { version, inputs, outputs } = specsOf(registry, name, selector);
  const versions = registry.statuses(name).filter((s) => s.state === 'AVAILABLE').map((s) => String(s.version));
  const tensor = (s: TensorSpec): unknown => ({ name: s.name, datatype: s.datatype, shape: s.shape });
  return {
    name,
    versions: selector.version === undefined ? versions : [String(version)],
    platform: 'onnxruntime_onnx',
    inputs: inputs.map(tensor),
    outputs: outputs.map(tensor),
  };
}

/** GET /v2/models/{name}[/versions/{v}]/ready: 200 when ready, else 503 with the reason. */
export function v2ModelReady(registry: ModelRegistry, name: string, selector: Selector): unknown {
  const version = registry.resolveVersion(name, selector);
  const status = registry.statuses(name).find((s) => s.version === version);
  if (status?.state !== 'AVAILABLE') throw unavailable(`model "${name}" version ${version} is not ready (state ${status?.state ?? 'END'})`);
  return { name, version: String(version), ready: true };
}
