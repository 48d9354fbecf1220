import { EdgefleetError, errorMessage } from '../errors.js';
import type { ModelSession } from './session.js';
import { elementCount, type HostTensor, type TensorData, type TensorSpec } from './tensor.js';

/** Warm-up requests the operator or publisher gave, already decoded for the model. */
export interface WarmupRequests {
  /** Names where they came from in messages: `the manifest's selfTest`, `/models/m/1/warmup.json`. */
  source: string;
  requests: readonly (readonly HostTensor[])[];
}

export type WarmupOutcome =
  | { input: 'given'; ms: number }
  /** `failure` is set when the generated input did not run; the version serves anyway. */
  | { input: 'generated'; ms: number; failure?: string };

/**
 * Warms a session up before it takes traffic, as TensorFlow Serving and
 * Triton do: each given request runs `runs` times and every one must pass,
 * since they are real input for the model. Without them a generated input
 * runs instead; that one may not be valid input at all (a divisor of zero, a
 * Reshape to a shape read from the data), so its failure is returned, not
 * thrown: a real request can still succeed.
 */
export async function warmUp(session: ModelSession, given: WarmupRequests | undefined, runs: number): Promise<WarmupOutcome> {
  const started = performance.now();
  if (given === undefined) {
    const inputs = warmupInputs(session.inputs);
    try {
      for (let i = 0; i < runs; i++) await session.run(inputs);
    } catch (err) {
      return { input: 'generated', ms: performance.now() - started, failure: errorMessage(err).split('\n', 1)[0] ?? '' };
    }
    return { input: 'generated', ms: performance.now() - started };
  }
  for (const [k, inputs] of given.requests.entries()) {
    try {
      for (let i = 0; i < runs; i++) await session.run(inputs);
    } catch (err) {
      throw new EdgefleetError('MODEL_LOAD', `warm-up request ${k + 1} of ${given.source} failed to run: ${errorMessage(err).split('\n', 1)[0] ?? ''}`, { cause: err });
    }
  }
  return { input: 'given', ms: performance.now() - started };
}

/**
 * A generated input for each declared input: dynamic dimensions become 1 and
 * values are small and deterministic (0, 1, 2), so warm-up exercises the real
 * kernels (and allocates their buffers) without special data. Every value
 * is at most 2 and every dynamic dimension 1, so an operator that sizes its
 * output from input values (Range, Tile, Expand, ConstantOfShape, Resize)
 * stays small, and ONNX Runtime reports a node that refuses the values
 * (integer division by zero, a Reshape that does not fit) as an error of the
 * run, not an abort: a generated warm-up can fail but cannot take the process
 * down (test/onnx-conformance.test.ts runs it on hundreds of ONNX backend
 * test models in one process).
 */
export function warmupInputs(specs: readonly TensorSpec[]): HostTensor[] {
  return specs.map((spec) => {
    const shape = spec.shape.map((d) => (d < 0 ? 1 : d));
    return { name: spec.name, datatype: spec.datatype, shape, data: fill(spec.datatype, elementCount(shape)) };
  });
}

function fill(datatype: TensorSpec['datatype'], n: number): TensorData {
  const pattern = (i: number): number => i % 3;
  switch (datatype) {
    case 'BOOL':
    case 'UINT8':
      return Uint8Array.from({ length: n }, (_, i) => pattern(i) & 1);
    case 'INT8':
      return Int8Array.from({ length: n }, (_, i) => pattern(i));
    case 'UINT16':
      return Uint16Array.from({ length: n }, (_, i) => pattern(i));
    case 'FP16':
      return new Uint16Array(n).fill(0x3c00); // 1.0 in IEEE half
    case 'INT16':
      return Int16Array.from({ length: n }, (_, i) => pattern(i));
    case 'UINT32':
      return Uint32Array.from({ length: n }, (_, i) => pattern(i));
    case 'INT32':
      return Int32Array.from({ length: n }, (_, i) => pattern(i));
    case 'UINT64':
      return BigUint64Array.from({ length: n }, (_, i) => BigInt(pattern(i)));
    case 'INT64':
      return BigInt64Array.from({ length: n }, (_, i) => BigInt(pattern(i)));
    case 'FP32':
      return Float32Array.from({ length: n }, (_, i) => pattern(i) * 0.5);
    case 'FP64':
      return Float64Array.from({ length: n }, (_, i) => pattern(i) * 0.5);
    case 'BYTES':
      return Array.from({ length: n }, () => 'warmup');
  }
}
