/**
 * The digit the demo sends: a real handwritten one from the held-out test
 * split (never seen in training). The model is about 94% accurate, so the
 * demo takes the first test image of the wanted class that the published
 * int8 model gets right, with the very pixels written to the request file:
 * the same digit every run, and an answer that matches its label.
 */
import { readFile } from 'node:fs/promises';
import { loadOrt } from '../agent/runtime/ort.js';
import { CLASSES, IMAGE_SIZE, image, loadMnist } from '../models/mnist/data.js';
import { INPUT, OUTPUT, createSession } from '../models/mnist/evaluate.js';

export interface TestDigit {
  /** Index in the held-out test split. */
  index: number;
  label: number;
  /** IMAGE_SIZE pixels in [0, 1], rounded to 3 decimals to keep the request file small. */
  pixels: number[];
}

export function argmax(values: readonly number[]): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] ?? -Infinity) > (values[best] ?? -Infinity)) best = i;
  return best;
}

export async function pickTestDigit(modelFile: string, label: number): Promise<TestDigit> {
  const { test } = loadMnist();
  const ort = await loadOrt();
  const session = await createSession(ort, await readFile(modelFile));
  try {
    for (let index = 0; index < test.count; index++) {
      if (test.labels[index] !== label) continue;
      const pixels = Array.from(image(test, index), (p) => Math.round(p * 1000) / 1000);
      const out = await session.run({ [INPUT]: new ort.Tensor('float32', Float32Array.from(pixels), [1, IMAGE_SIZE]) });
      const probs = Array.from((out[OUTPUT]?.data ?? []) as Float32Array).slice(0, CLASSES);
      if (argmax(probs) === label) return { index, label, pixels };
    }
  } finally {
    await session.release();
  }
  throw new Error(`the model classifies no test image of a ${label} correctly`);
}
