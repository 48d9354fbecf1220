/**
 * Score exported models with the real onnxruntime-node: accuracy on the
 * held-out split and per-request (batch 1) latency.
 */
import type { InferenceSession } from 'onnxruntime-node';

import type { Ort } from '../../agent/runtime/ort.js';
import { CLASSES, IMAGE_SIZE } from './data.js';
import type { Dataset } from './data.js';

/** One thread for everything: latency per request on one core, as on a small edge board. */
export const SESSION_OPTIONS: InferenceSession.SessionOptions = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  // 'all' includes the fusion that turns the int8 pattern into one DynamicQuantizeMatMul kernel.
  graphOptimizationLevel: 'all',
};

export const INPUT = 'x';
export const OUTPUT = 'probs';

export function createSession(ort: Ort, model: Uint8Array): Promise<InferenceSession> {
  return ort.InferenceSession.create(model, SESSION_OPTIONS);
}

/** Class probabilities [n, CLASSES] for images [start, start + n) of `data`. */
export async function runProbs(ort: Ort, session: InferenceSession, data: Dataset, start: number, n: number): Promise<Float32Array> {
  const images = data.images.subarray(start * IMAGE_SIZE, (start + n) * IMAGE_SIZE);
  const out = await session.run({ [INPUT]: new ort.Tensor('float32', images, [n, IMAGE_SIZE]) });
  const probs = out[OUTPUT];
  if (!probs || probs.type !== 'float32') throw new Error(`model output ${OUTPUT} missing or not float32`);
  return probs.data as Float32Array;
}

/** Test accuracy in percent (0–100), run in batches to bound memory. */
export async function accuracyPercent(ort: Ort, session: InferenceSession, data: Dataset, batchSize = 512): Promise<number> {
  let correct = 0;
  for (let start = 0; start < data.count; start += batchSize) {
    const n = Math.min(batchSize, data.count - start);
    const probs = await runProbs(ort, session, data, start, n);
    for (let r = 0; r < n; r++) {
      let best = 0;
      for (let k = 1; k < CLASSES; k++) if (probs[r * CLASSES + k]! > probs[r * CLASSES + best]!) best = k;
      if (best === data.labels[start + r]) correct++;
    }
  }
  return (100 * correct) / data.count;
}

export interface LatencyStats {
  runs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
}

function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
}

export interface LatencyOptions {
  /** Timed requests per model (default 1000). */
  runs?: number;
  /** Untimed requests first, so one-off allocation and lazy init are not measured (default 50). */
  warmup?: number;
}

/**
 * Batch-1 request latency (input tensor + run) for each session, cycling
 * through test images. Sessions are measured in interleaved blocks so that a
 * burst of load on a shared host skews every model alike, not just one.
 */
export async function measureLatency(
  ort: Ort, sessions: readonly InferenceSession[], data: Dataset, opts: LatencyOptions = {},
): Promise<LatencyStats[]> {
  const { runs = 1000, warmup = 50 } = opts;
  const block = 50;
  const times = sessions.map(() => new Float64Array(runs));
  for (const s of sessions) for (let i = 0; i < warmup; i++) await runProbs(ort, s, data, i % data.count, 1);
  for (let done = 0; done < runs; done += block) {
    for (const [m, s] of sessions.entries()) {
      for (let i = done; i < Math.min(runs, done + block); i++) {
        const t0 = process.hrtime.bigint();
        await runProbs(ort, s, data, i % data.count, 1);
        times[m]![i] = Number(process.hrtime.bigint() - t0) / 1e6;
      }
    }
  }
  return times.map((t) => {
    const sorted = t.sort();
    return { runs, p50Ms: percentile(sorted, 0.5), p90Ms: percentile(sorted, 0.9), p99Ms: percentile(sorted, 0.99) };
  });
}
