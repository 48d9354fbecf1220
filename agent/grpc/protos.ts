import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadSync, type Options, type ServiceDefinition } from '@grpc/proto-loader';

/** The .proto files the gRPC API serves, copied from TensorFlow Serving and KServe (agent/grpc/proto/README.md). */
export const PROTO_FILES = [
  'tensorflow_serving/apis/prediction_service.proto',
  'tensorflow_serving/apis/model_service.proto',
  'grpc_predict_v2.proto',
  'grpc_health/v1/health.proto',
  'grpc_reflection/v1/reflection.proto',
  'grpc_reflection/v1alpha/reflection.proto',
] as const;

/**
 * How messages become objects: names as in the .proto (snake_case, as clients write them),
 * 64-bit integers as decimal strings (exact, unlike numbers), enums by name, bytes as
 * Buffers (views, not copies), repeated fields and maps always present.
 */
const OPTIONS: Options = { keepCase: true, longs: String, enums: String, arrays: true, objects: true, oneofs: true, defaults: false };

/** The proto directory next to this module (source tree) or in the package (dist/). */
export function protoDir(): string {
  for (const rel of ['./proto', '../../../agent/grpc/proto']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(dir)) return dir;
  }
  throw new Error('the gRPC .proto files (agent/grpc/proto) are missing from the installation');
}

export interface GrpcServices {
  prediction: ServiceDefinition;
  model: ServiceDefinition;
  inference: ServiceDefinition;
  health: ServiceDefinition;
  reflection: ServiceDefinition;
  reflectionAlpha: ServiceDefinition;
}

/** Reads the .proto files (once per server: a few milliseconds) into service definitions: each method's path and message coding. */
export function loadServices(): GrpcServices {
  const definition = loadSync([...PROTO_FILES], { ...OPTIONS, includeDirs: [protoDir()] });
  const service = (name: string): ServiceDefinition => {
    const found = definition[name];
    if (!found || 'format' in found) throw new Error(`service ${name} is not in the .proto files`);
    return found;
  };
  // Predict and ModelInfer answers come already encoded (tf-response.ts, kserve-response.ts): tensors written as bytes, not element by element.
  const encoded = (name: string, method: string): ServiceDefinition => {
    const def = service(name);
    const m = def[method];
    if (!m) throw new Error(`${name} has no ${method} method`);
    return { ...def, [method]: { ...m, responseSerialize: (bytes: object) => bytes as Buffer } };
  };
  return {
    prediction: encoded('tensorflow.serving.PredictionService', 'Predict'),
    model: service('tensorflow.serving.ModelService'),
    inference: encoded('inference.GRPCInferenceService', 'ModelInfer'),
    health: service('grpc.health.v1.Health'),
    reflection: service('grpc.reflection.v1.ServerReflection'),
    reflectionAlpha: service('grpc.reflection.v1alpha.ServerReflection'),
  };
}
