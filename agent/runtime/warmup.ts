import { elementCount, type HostTensor, type TensorData, type TensorSpec } from './tensor.js';

/**
 * A generated input for each declared input: dynamic dimensions become 1 and
 * values are small and deterministic, so warm-up exercises the real kernels
 * (and allocates their buffers) without special data.
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
