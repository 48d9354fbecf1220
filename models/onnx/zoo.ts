/**
 * Generated ONNX test models. Every model is built from code on demand, so
 * tests and benchmarks never depend on opaque checked-in blobs.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { attr, buildModel, ELEM_TYPES } from './builder.js';
import type { ElemType } from './builder.js';

/** Input `x` → output `y` (Identity), both of `elemType` with dynamic shape ['batch', 'n']. */
export function identityModel(elemType: ElemType): Uint8Array {
  const shape = ['batch', 'n'];
  return buildModel({
    name: `identity_${elemType}`,
    inputs: [{ name: 'x', type: elemType, shape }],
    outputs: [{ name: 'y', type: elemType, shape }],
    nodes: [{ op: 'Identity', inputs: ['x'], outputs: ['y'] }],
  });
}

/** Two FP32 inputs, three outputs of mixed type: `sum`, `product` and INT64 `argmax` of the sum. */
export function multiIoModel(): Uint8Array {
  const pair = ['batch', 4];
  return buildModel({
    name: 'multi_io',
    inputs: [
      { name: 'a', type: 'float32', shape: pair },
      { name: 'b', type: 'float32', shape: pair },
    ],
    outputs: [
      { name: 'sum', type: 'float32', shape: pair },
      { name: 'product', type: 'float32', shape: pair },
      { name: 'argmax', type: 'int64', shape: ['batch'] },
    ],
    nodes: [
      { op: 'Add', inputs: ['a', 'b'], outputs: ['sum'] },
      { op: 'Mul', inputs: ['a', 'b'], outputs: ['product'] },
      {
        op: 'ArgMax', inputs: ['sum'], outputs: ['argmax'],
        attrs: { axis: attr.int(1), keepdims: attr.int(0) },
      },
    ],
  });
}

export interface MlpShape {
  inputs?: number;
  hidden?: number;
  classes?: number;
}

/**
 * MLP parameters, row-major: `w1` is [inputs, hidden] and `w2` is [hidden, classes]
 * (the graph computes x·w1 + b1, i.e. Gemm without transB).
 */
export interface MlpWeights {
  w1: Float32Array;
  b1: Float32Array;
  w2: Float32Array;
  b2: Float32Array;
}

export interface MlpOptions extends MlpShape {
  seed?: number;
  /** Explicit (e.g. trained) parameters; when given, `seed` is ignored. */
  weights?: MlpWeights;
}

/** mulberry32: a tiny seeded PRNG, so generated weights are identical on every run and host. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function uniform(rand: () => number, count: number, scale: number): Float32Array {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = (rand() * 2 - 1) * scale;
  return out;
}

/** Deterministic weights scaled by 1/sqrt(fan_in) so activations neither vanish nor saturate. */
export function mlpWeights(opts: MlpShape & { seed?: number } = {}): MlpWeights {
  const { inputs = 784, hidden = 128, classes = 10, seed = 1 } = opts;
  const rand = mulberry32(seed);
  const s1 = 1 / Math.sqrt(inputs);
  const s2 = 1 / Math.sqrt(hidden);
  return {
    w1: uniform(rand, inputs * hidden, s1),
    b1: uniform(rand, hidden, s1),
    w2: uniform(rand, hidden * classes, s2),
    b2: uniform(rand, classes, s2),
  };
}

/** x FP32 ['batch', inputs] → Gemm → Relu → Gemm → Softmax(axis=1) → `probs` FP32 ['batch', classes]. */
export function mlpModel(opts: MlpOptions = {}): Uint8Array {
  const { inputs = 784, hidden = 128, classes = 10, seed = 1 } = opts;
  const { w1, b1, w2, b2 } = opts.weights ?? mlpWeights({ inputs, hidden, classes, seed });
  return buildModel({
    name: 'mlp',
    doc: `MLP ${inputs}-${hidden}-${classes}`,
    inputs: [{ name: 'x', type: 'float32', shape: ['batch', inputs] }],
    outputs: [{ name: 'probs', type: 'float32', shape: ['batch', classes] }],
    initializers: [
      { name: 'w1', type: 'float32', dims: [inputs, hidden], data: w1 },
      { name: 'b1', type: 'float32', dims: [hidden], data: b1 },
      { name: 'w2', type: 'float32', dims: [hidden, classes], data: w2 },
      { name: 'b2', type: 'float32', dims: [classes], data: b2 },
    ],
    nodes: [
      { op: 'Gemm', inputs: ['x', 'w1', 'b1'], outputs: ['h'] },
      { op: 'Relu', inputs: ['h'], outputs: ['h_relu'] },
      { op: 'Gemm', inputs: ['h_relu', 'w2', 'b2'], outputs: ['logits'] },
      { op: 'Softmax', inputs: ['logits'], outputs: ['probs'], attrs: { axis: attr.int(1) } },
    ],
  });
}

/** y = x * factor; hot-swap tests use factor N for version N so each version's output is recognisable. */
export function scaleModel(factor: number): Uint8Array {
  const shape = ['batch', 'n'];
  return buildModel({
    name: 'scale',
    doc: `y = x * ${factor}`,
    inputs: [{ name: 'x', type: 'float32', shape }],
    outputs: [{ name: 'y', type: 'float32', shape }],
    initializers: [{ name: 'factor', type: 'float32', dims: [], data: new Float32Array([factor]) }],
    nodes: [{ op: 'Mul', inputs: ['x', 'factor'], outputs: ['y'] }],
  });
}

/**
 * y = x * factor, plus a lookup that fails at run time for any x outside
 * [0, 4): passes warm-up and a self-test on small inputs, then breaks on field
 * traffic, like a model with a latent bug.
 */
export function fragileScaleModel(factor: number): Uint8Array {
  const shape = ['batch', 'n'];
  return buildModel({
    name: 'fragile_scale',
    inputs: [{ name: 'x', type: 'float32', shape }],
    outputs: [{ name: 'y', type: 'float32', shape }],
    initializers: [
      { name: 'factor', type: 'float32', dims: [], data: new Float32Array([factor]) },
      { name: 'table', type: 'float32', dims: [4], data: new Float32Array(4) },
    ],
    nodes: [
      { op: 'Mul', inputs: ['x', 'factor'], outputs: ['scaled'] },
      { op: 'Cast', inputs: ['x'], outputs: ['index'], attrs: { to: attr.int(7) } },
      { op: 'Gather', inputs: ['table', 'index'], outputs: ['zero'] },
      { op: 'Add', inputs: ['scaled', 'zero'], outputs: ['y'] },
    ],
  });
}

/** y = Relu(x) with x fixed at [2, 3], for tests that send a wrongly shaped input. */
export function staticShapeModel(): Uint8Array {
  return buildModel({
    name: 'static_shape',
    inputs: [{ name: 'x', type: 'float32', shape: [2, 3] }],
    outputs: [{ name: 'y', type: 'float32', shape: [2, 3] }],
    nodes: [{ op: 'Relu', inputs: ['x'], outputs: ['y'] }],
  });
}

/** FP16 input `x` → `y` FP32 (Cast) and `z` FP16 (Identity), for mixed-type outputs. */
export function castModel(): Uint8Array {
  const shape = ['batch', 'n'];
  return buildModel({
    name: 'cast',
    inputs: [{ name: 'x', type: 'float16', shape }],
    outputs: [
      { name: 'y', type: 'float32', shape },
      { name: 'z', type: 'float16', shape },
    ],
    nodes: [
      { op: 'Cast', inputs: ['x'], outputs: ['y'], attrs: { to: attr.int(1) } },
      { op: 'Identity', inputs: ['x'], outputs: ['z'] },
    ],
  });
}

/**
 * q = x / d in INT32 (ONNX integer Div truncates): runs on any real request
 * whose divisor has no zero, and fails on a generated warm-up input, which
 * holds zeros. The model every warm-up on made-up data would wrongly refuse.
 */
export function divideModel(): Uint8Array {
  const shape = ['batch', 'n'];
  return buildModel({
    name: 'divide',
    inputs: [
      { name: 'x', type: 'int32', shape },
      { name: 'd', type: 'int32', shape },
    ],
    outputs: [{ name: 'q', type: 'int32', shape }],
    nodes: [{ op: 'Div', inputs: ['x', 'd'], outputs: ['q'] }],
  });
}

export interface ZooEntry {
  bytes(): Uint8Array;
  description: string;
}

function identityEntries(): Record<string, ZooEntry> {
  const out: Record<string, ZooEntry> = {};
  for (const t of ELEM_TYPES) {
    out[`identity-${t}`] = {
      bytes: () => identityModel(t),
      description: `Identity x → y, ${t}, shape [batch, n]`,
    };
  }
  return out;
}

/** Every zoo model by a filesystem- and topic-safe name; bytes are built lazily. */
export const ZOO: Readonly<Record<string, ZooEntry>> = {
  ...identityEntries(),
  'multi-io': {
    bytes: multiIoModel,
    description: 'a, b FP32 [batch, 4] → sum, product FP32 and argmax(sum) INT64 [batch]',
  },
  mlp: {
    bytes: () => mlpModel(),
    description: 'MLP 784-128-10 (seed 1): x FP32 [batch, 784] → probs FP32 [batch, 10]',
  },
  'scale-1': { bytes: () => scaleModel(1), description: 'y = x * 1, FP32 [batch, n]' },
  'scale-2': { bytes: () => scaleModel(2), description: 'y = x * 2, FP32 [batch, n]' },
  'static-shape': {
    bytes: staticShapeModel,
    description: 'y = Relu(x), x FP32 fixed [2, 3]',
  },
  cast: {
    bytes: castModel,
    description: 'x FP16 [batch, n] → y FP32 (Cast), z FP16 (Identity)',
  },
  divide: {
    bytes: divideModel,
    description: 'q = x / d, INT32 [batch, n]; any zero in d is a run-time error',
  },
};

/**
 * Write `{dir}/{name}/{version}/model.onnx` atomically: a watcher never sees a
 * half-written model because the temp file is renamed within the same directory.
 * Returns the final path.
 */
export async function writeModelTree(
  dir: string,
  name: string,
  version: number | string,
  bytes: Uint8Array,
): Promise<string> {
  const versionDir = path.join(dir, name, String(version));
  await mkdir(versionDir, { recursive: true });
  const final = path.join(versionDir, 'model.onnx');
  const tmp = path.join(versionDir, `.model.onnx.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    await writeFile(tmp, bytes);
    await rename(tmp, final);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  return final;
}
