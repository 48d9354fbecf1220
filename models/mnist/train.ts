/**
 * A 784-H-10 MLP (Dense → ReLU → Dense → softmax cross-entropy) trained in
 * plain TypeScript with minibatch Adam.
 *
 * Weights use the layout of `mlpModel` in models/onnx/zoo.ts (w1 [784, H],
 * w2 [H, 10], row-major, y = x·w + b) so they export without transposing.
 * Everything is seeded (init and per-epoch shuffles come from mulberry32), so
 * the same seed gives bit-identical weights on a given host.
 *
 * Speed: one pass per sample does forward and backward, accumulating the
 * batch gradient in preallocated Float32Arrays; inner loops run over
 * contiguous rows, and the first layer skips zero pixels (~80% of MNIST), which
 * is where nearly all the arithmetic is.
 */
import { mulberry32 } from '../onnx/zoo.js';
import type { MlpWeights } from '../onnx/zoo.js';
import { CLASSES, IMAGE_SIZE } from './data.js';
import type { Dataset } from './data.js';

export interface TrainOptions {
  epochs?: number;
  seed?: number;
  hidden?: number;
  batchSize?: number;
  /** Adam step size at epoch 0; decays linearly to 10% of it by the last epoch. */
  learningRate?: number;
  /** Called after each epoch, e.g. for progress output. */
  onEpoch?: (stats: EpochStats) => void;
}

export interface EpochStats {
  epoch: number;
  /** Mean training cross-entropy over the epoch. */
  loss: number;
  /** Training accuracy in [0, 1], measured during the epoch (before each step). */
  trainAccuracy: number;
}

export const TRAIN_DEFAULTS = { epochs: 8, seed: 1, hidden: 128, batchSize: 32, learningRate: 2e-3 } as const;

const BETA1 = 0.9;
const BETA2 = 0.999;
const EPS = 1e-8;

/** Per-tensor Adam state; `grad` accumulates the current minibatch's sum. */
interface Param {
  value: Float32Array;
  grad: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

interface Net {
  hidden: number;
  w1: Param; b1: Param; w2: Param; b2: Param;
  /** Scratch for one sample: hidden activations, its gradient, and class probabilities. */
  h: Float32Array; dh: Float32Array; p: Float32Array;
}

function param(value: Float32Array): Param {
  const n = value.length;
  return { value, grad: new Float32Array(n), m: new Float32Array(n), v: new Float32Array(n) };
}

/** He (Kaiming) normal init, std sqrt(2 / fanIn), right for ReLU; Box–Muller over the seeded PRNG. */
function heNormal(rand: () => number, count: number, fanIn: number): Float32Array {
  const std = Math.sqrt(2 / fanIn);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rand()));
    const t = 2 * Math.PI * rand();
    out[i] = r * Math.cos(t) * std;
    if (i + 1 < count) out[i + 1] = r * Math.sin(t) * std;
  }
  return out;
}

function initNet(hidden: number, rand: () => number): Net {
  return {
    hidden,
    w1: param(heNormal(rand, IMAGE_SIZE * hidden, IMAGE_SIZE)),
    b1: param(new Float32Array(hidden)),
    w2: param(heNormal(rand, hidden * CLASSES, hidden)),
    b2: param(new Float32Array(CLASSES)),
    h: new Float32Array(hidden),
    dh: new Float32Array(hidden),
    p: new Float32Array(CLASSES),
  };
}

/** h = relu(x·w1 + b1), p = softmax(h·w2 + b2) for the image at `xOff`; returns the argmax class. */
function forward(w: MlpWeights, hidden: number, x: Float32Array, xOff: number, h: Float32Array, p: Float32Array): number {
  const { w1, b1, w2, b2 } = w;
  h.set(b1);
  for (let i = 0; i < IMAGE_SIZE; i++) {
    const xi = x[xOff + i]!;
    if (xi === 0) continue;
    const row = i * hidden;
    for (let j = 0; j < hidden; j++) h[j]! += xi * w1[row + j]!;
  }
  p.set(b2);
  for (let j = 0; j < hidden; j++) {
    const hj = h[j]! > 0 ? h[j]! : 0;
    h[j] = hj;
    if (hj === 0) continue;
    const row = j * CLASSES;
    for (let k = 0; k < CLASSES; k++) p[k]! += hj * w2[row + k]!;
  }
  let best = 0;
  for (let k = 1; k < CLASSES; k++) if (p[k]! > p[best]!) best = k;
  // Subtract the max logit so exp never overflows.
  const max = p[best]!;
  let sum = 0;
  for (let k = 0; k < CLASSES; k++) sum += (p[k] = Math.exp(p[k]! - max));
  for (let k = 0; k < CLASSES; k++) p[k]! /= sum;
  return best;
}

/** Add this sample's gradient (softmax-CE, dlogits = p - onehot) into the params' grads. */
function backward(net: Net, x: Float32Array, xOff: number, label: number): void {
  const { hidden, h, dh, p } = net;
  const w2 = net.w2.value;
  const gw2 = net.w2.grad, gb2 = net.b2.grad, gw1 = net.w1.grad, gb1 = net.b1.grad;
  p[label]! -= 1;
  for (let k = 0; k < CLASSES; k++) gb2[k]! += p[k]!;
  for (let j = 0; j < hidden; j++) {
    const hj = h[j]!;
    // ReLU gate: no gradient flows through units that were off.
    if (hj === 0) { dh[j] = 0; continue; }
    const row = j * CLASSES;
    let g = 0;
    for (let k = 0; k < CLASSES; k++) {
      gw2[row + k]! += hj * p[k]!;
      g += p[k]! * w2[row + k]!;
    }
    dh[j] = g;
    gb1[j]! += g;
  }
  for (let i = 0; i < IMAGE_SIZE; i++) {
    const xi = x[xOff + i]!;
    if (xi === 0) continue;
    const row = i * hidden;
    for (let j = 0; j < hidden; j++) gw1[row + j]! += xi * dh[j]!;
  }
}

/** One Adam step on the mean of the accumulated batch gradient, then clear it. */
function adamStep(q: Param, lr: number, step: number, batch: number): void {
  const { value, grad, m, v } = q;
  const c1 = 1 / (1 - BETA1 ** step);
  const c2 = 1 / (1 - BETA2 ** step);
  const inv = 1 / batch;
  for (let i = 0; i < value.length; i++) {
    const g = grad[i]! * inv;
    const mi = (m[i] = BETA1 * m[i]! + (1 - BETA1) * g);
    const vi = (v[i] = BETA2 * v[i]! + (1 - BETA2) * g * g);
    value[i]! -= (lr * mi * c1) / (Math.sqrt(vi * c2) + EPS);
  }
  grad.fill(0);
}

function weightsOf(net: Net): MlpWeights {
  return { w1: net.w1.value, b1: net.b1.value, w2: net.w2.value, b2: net.b2.value };
}

/** Fisher–Yates with the seeded PRNG, so the visiting order is reproducible. */
function shuffle(order: Uint32Array, rand: () => number): void {
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
}

interface Schedule { lr: number; batchSize: number; step: number }

function runEpoch(net: Net, data: Dataset, order: Uint32Array, s: Schedule): Omit<EpochStats, 'epoch'> {
  const w = weightsOf(net);
  const params = [net.w1, net.b1, net.w2, net.b2];
  let loss = 0;
  let correct = 0;
  for (let start = 0; start < order.length; start += s.batchSize) {
    const end = Math.min(order.length, start + s.batchSize);
    for (let n = start; n < end; n++) {
      const idx = order[n]!;
      const label = data.labels[idx]!;
      const xOff = idx * IMAGE_SIZE;
      if (forward(w, net.hidden, data.images, xOff, net.h, net.p) === label) correct++;
      loss -= Math.log(Math.max(net.p[label]!, 1e-12));
      backward(net, data.images, xOff, label);
    }
    s.step++;
    for (const q of params) adamStep(q, s.lr, s.step, end - start);
  }
  return { loss: loss / order.length, trainAccuracy: correct / order.length };
}

/** Train on `data` (never pass the test split here) and return the weights. */
export function trainMlp(data: Dataset, opts: TrainOptions = {}): MlpWeights {
  const { epochs, seed, hidden, batchSize, learningRate } = { ...TRAIN_DEFAULTS, ...opts };
  if (!(epochs >= 1 && batchSize >= 1 && hidden >= 1)) throw new Error('epochs, batchSize and hidden must be >= 1');
  const rand = mulberry32(seed);
  const net = initNet(hidden, rand);
  const order = Uint32Array.from({ length: data.count }, (_v, i) => i);
  const schedule: Schedule = { lr: learningRate, batchSize, step: 0 };
  for (let epoch = 0; epoch < epochs; epoch++) {
    // Linear decay to 10%: big steps early, fine-tuning late, without extra knobs.
    schedule.lr = learningRate * (1 - (0.9 * epoch) / Math.max(1, epochs - 1));
    shuffle(order, rand);
    const stats = runEpoch(net, data, order, schedule);
    opts.onEpoch?.({ epoch, ...stats });
  }
  return weightsOf(net);
}

/** Argmax class of every image in `data`, computed in TypeScript (a reference for the ONNX exports). */
export function predictClasses(w: MlpWeights, data: Dataset): Uint8Array {
  const hidden = w.b1.length;
  const h = new Float32Array(hidden);
  const p = new Float32Array(CLASSES);
  const out = new Uint8Array(data.count);
  for (let n = 0; n < data.count; n++) out[n] = forward(w, hidden, data.images, n * IMAGE_SIZE, h, p);
  return out;
}

/** Fraction in [0, 1] of `predicted` equal to `labels`. */
export function accuracyOf(predicted: ArrayLike<number>, labels: ArrayLike<number>): number {
  if (predicted.length !== labels.length || labels.length === 0) throw new Error('accuracy: length mismatch or empty');
  let correct = 0;
  for (let i = 0; i < labels.length; i++) if (predicted[i] === labels[i]) correct++;
  return correct / labels.length;
}
