/**
 * The `mnist` package's ~10,000 real MNIST digits (28×28, pixels in [0, 1]),
 * split deterministically into train and held-out test sets.
 *
 * The package's own `mnist.set(train, test)` shuffles with Math.random, so
 * two runs would disagree on what was held out; instead the last
 * `testFraction` of every digit class is the test set, always the same
 * samples, and training never sees them.
 */
import { createRequire } from 'node:module';

export const IMAGE_SIZE = 784;
export const CLASSES = 10;
export const DEFAULT_TEST_FRACTION = 0.15;

/** The part of the package's per-digit API used here (src/mnist.js). */
interface MnistDigit {
  id: number;
  /** Samples of this digit. */
  length: number;
  /** One sample: IMAGE_SIZE floats in [0, 1]. */
  get(index: number): number[];
}

/** `count` images, row-major [count, IMAGE_SIZE], with their labels. */
export interface Dataset {
  count: number;
  images: Float32Array;
  labels: Uint8Array;
}

export interface MnistSplit {
  train: Dataset;
  test: Dataset;
}

// The package is CommonJS without types; require it and describe the slice we use.
const requireCjs = createRequire(import.meta.url);

function loadDigits(): readonly MnistDigit[] {
  const digits = requireCjs('mnist') as MnistDigit[];
  if (digits.length !== CLASSES) throw new Error(`mnist package: expected ${CLASSES} digit classes`);
  return digits;
}

/** Samples [start, end) of every class, labels in class order (training shuffles per epoch). */
function collect(digits: readonly MnistDigit[], ranges: readonly (readonly [number, number])[]): Dataset {
  const count = ranges.reduce((n, [start, end]) => n + end - start, 0);
  const images = new Float32Array(count * IMAGE_SIZE);
  const labels = new Uint8Array(count);
  let row = 0;
  digits.forEach((digit, d) => {
    const [start, end] = ranges[d] ?? [0, 0];
    for (let i = start; i < end; i++, row++) {
      const pixels = digit.get(i);
      if (pixels.length !== IMAGE_SIZE) throw new Error(`mnist digit ${d} sample ${i}: ${pixels.length} pixels`);
      images.set(pixels, row * IMAGE_SIZE);
      labels[row] = d;
    }
  });
  return { count, images, labels };
}

let cached: { fraction: number; split: MnistSplit } | undefined;

/** Deterministic split: per class, the first (1 - testFraction) for training, the rest for test. */
export function loadMnist(testFraction = DEFAULT_TEST_FRACTION): MnistSplit {
  if (!(testFraction > 0 && testFraction < 1)) throw new Error(`testFraction must be in (0, 1): ${testFraction}`);
  if (cached?.fraction === testFraction) return cached.split;
  const digits = loadDigits();
  const cut = digits.map((d) => Math.floor(d.length * (1 - testFraction)));
  const train = collect(digits, digits.map((_d, i) => [0, cut[i] ?? 0] as const));
  const test = collect(digits, digits.map((d, i) => [cut[i] ?? 0, d.length] as const));
  cached = { fraction: testFraction, split: { train, test } };
  return cached.split;
}

/** Image `index` as a [1, IMAGE_SIZE] view (no copy), e.g. for a batch-1 request. */
export function image(ds: Dataset, index: number): Float32Array {
  if (index < 0 || index >= ds.count) throw new RangeError(`image ${index} of ${ds.count}`);
  return ds.images.subarray(index * IMAGE_SIZE, (index + 1) * IMAGE_SIZE);
}

/** Images [start, start + size) as one batch view (clamped to the end of the set). */
export function batch(ds: Dataset, start: number, size: number): { images: Float32Array; labels: Uint8Array } {
  const end = Math.min(ds.count, start + size);
  return {
    images: ds.images.subarray(start * IMAGE_SIZE, end * IMAGE_SIZE),
    labels: ds.labels.subarray(start, end),
  };
}
