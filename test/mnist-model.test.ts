import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { loadOrt } from '../agent/runtime/ort.js';
import type { Ort } from '../agent/runtime/ort.js';
import { buildMnistModels } from '../models/mnist/build.js';
import type { BuildResult } from '../models/mnist/build.js';
import { CLASSES, IMAGE_SIZE, loadMnist } from '../models/mnist/data.js';
import type { Dataset } from '../models/mnist/data.js';
import { createSession, runProbs } from '../models/mnist/evaluate.js';
import { quantizeDynamic, quantizeWeight } from '../models/mnist/quantize.js';
import { buildModel, DATA_TYPE, decodeModel } from '../models/onnx/builder.js';
import { mulberry32 } from '../models/onnx/zoo.js';

// Few epochs keep the suite fast; the default (8) is for `npm run models`.
const EPOCHS = 2;
const SEED = 7;

let dir: string;
let built: BuildResult;
let ort: Ort;
let test: Dataset;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'mnist-model-'));
  ort = await loadOrt();
  test = loadMnist().test;
  built = await buildMnistModels({ outDir: dir, epochs: EPOCHS, seed: SEED });
}, 60_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha = async (file: string): Promise<string> => createHash('sha256').update(await readFile(file)).digest('hex');

describe('mnist data split', () => {
  it('holds out the last 15% of every digit class, disjoint from training', () => {
    const { train } = loadMnist();
    expect(train.count + test.count).toBe(10_000);
    expect(test.count).toBeGreaterThan(1400);
    const perClass = new Array<number>(CLASSES).fill(0);
    for (const l of test.labels) perClass[l]!++;
    for (const n of perClass) expect(n).toBeGreaterThan(100);
    expect(train.images.length).toBe(train.count * IMAGE_SIZE);
  });
});

describe('mnist models', () => {
  it('fp32 reaches at least 85% on the held-out digits', () => {
    expect(built.cached).toBe(false);
    expect(built.fp32.accuracy).toBeGreaterThanOrEqual(85);
  });

  it('int8 stays within 1 point of fp32', () => {
    expect(built.int8.accuracy).toBeGreaterThanOrEqual(built.fp32.accuracy - 1);
  });

  it('int8 file is under 40% of the fp32 file', async () => {
    const [fp32, int8] = await Promise.all([stat(built.fp32.path), stat(built.int8.path)]);
    expect(fp32.size).toBe(built.fp32.bytes);
    expect(int8.size).toBe(built.int8.bytes);
    expect(int8.size).toBeLessThan(0.4 * fp32.size);
  });

  it('int8 graph really computes with integer ops and int8 weights', async () => {
    const graph = decodeModel(await readFile(built.int8.path)).graph!;
    const ops = (graph.node ?? []).map((n) => n.opType);
    const inits = graph.initializer ?? [];
    expect(ops.filter((o) => o === 'MatMulInteger')).toHaveLength(2);
    expect(ops).toContain('DynamicQuantizeLinear');
    expect(ops).not.toContain('Gemm');
    const matrices = (type: number): number[][] =>
      inits.filter((t) => t.dataType === type && t.dims?.length === 2).map((t) => (t.dims ?? []).map(Number));
    expect(matrices(DATA_TYPE.int8)).toEqual([[784, 128], [128, 10]]);
    // No fp32 copy of a weight matrix may survive.
    expect(matrices(DATA_TYPE.float32)).toEqual([]);
  });

  it('int8 probabilities are close to fp32 on real digits', async () => {
    const fp32 = await createSession(ort, await readFile(built.fp32.path));
    const int8 = await createSession(ort, await readFile(built.int8.path));
    const n = 32;
    const [a, b] = await Promise.all([runProbs(ort, fp32, test, 0, n), runProbs(ort, int8, test, 0, n)]);
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i]! - b[i]!));
    expect(maxDiff).toBeLessThan(0.05);
    await Promise.all([fp32.release(), int8.release()]);
  });

  it('reuses a matching build, and a rebuild with the same seed is bit-identical', async () => {
    const again = await buildMnistModels({ outDir: dir, epochs: EPOCHS, seed: SEED });
    expect(again).toEqual({ ...built, cached: true });
    const before = await sha(built.int8.path);
    // A damaged file must not be served from the cache.
    await writeFile(built.int8.path, 'not a model');
    const rebuilt = await buildMnistModels({ outDir: dir, epochs: EPOCHS, seed: SEED });
    expect(rebuilt.cached).toBe(false);
    expect(await sha(rebuilt.int8.path)).toBe(before);
    expect(rebuilt.fp32.accuracy).toBe(built.fp32.accuracy);
  }, 60_000);
});

describe('dynamic quantizer', () => {
  it('rounds every weight to within half a step of its column scale', () => {
    const rand = mulberry32(3);
    const [k, n] = [5, 4];
    const w = Float32Array.from({ length: k * n }, () => rand() * 2 - 1);
    for (let r = 0; r < k; r++) w[r * n + 3] = 0; // an all-zero column must not give NaN
    const q = quantizeWeight(w, k, n);
    expect(q.scales).toHaveLength(n);
    for (let i = 0; i < w.length; i++) {
      const scale = q.scales[i % n]!;
      expect(Math.abs(q.values[i]! * scale - w[i]!)).toBeLessThanOrEqual(scale / 2 + 1e-7);
    }
  });

  it('handles Gemm with transB and a bias-free MatMul', async () => {
    const rand = mulberry32(9);
    const rnd = (count: number): Float32Array => Float32Array.from({ length: count }, () => rand() * 2 - 1);
    const fp32 = buildModel({
      name: 'two_linear',
      inputs: [{ name: 'x', type: 'float32', shape: ['batch', 6] }],
      outputs: [{ name: 'y', type: 'float32', shape: ['batch', 3] }],
      initializers: [
        { name: 'wt', type: 'float32', dims: [5, 6], data: rnd(30) }, // [N, K]: used with transB
        { name: 'b', type: 'float32', dims: [5], data: rnd(5) },
        { name: 'w2', type: 'float32', dims: [5, 3], data: rnd(15) },
      ],
      nodes: [
        { op: 'Gemm', inputs: ['x', 'wt', 'b'], outputs: ['h'], attrs: { transB: { kind: 'int', value: 1 } } },
        { op: 'MatMul', inputs: ['h', 'w2'], outputs: ['y'] },
      ],
    });
    const x = new ort.Tensor('float32', rnd(4 * 6), [4, 6]);
    const run = async (bytes: Uint8Array): Promise<Float32Array> => {
      const s = await ort.InferenceSession.create(bytes);
      const out = (await s.run({ x })).y!.data as Float32Array;
      await s.release();
      return out;
    };
    const [want, got] = [await run(fp32), await run(quantizeDynamic(fp32))];
    for (let i = 0; i < want.length; i++) expect(got[i]).toBeCloseTo(want[i]!, 1);
  });
});
