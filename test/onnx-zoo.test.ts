import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { buildModel, DATA_TYPE, decodeModel, ELEM_TYPES } from '../models/onnx/builder.js';
import type { ElemType, TensorData } from '../models/onnx/builder.js';
import {
  castModel, identityModel, mlpModel, mlpWeights, mulberry32, multiIoModel, scaleModel,
  staticShapeModel, writeModelTree, ZOO,
} from '../models/onnx/zoo.js';

type OrtData = Exclude<TensorData, readonly string[]> | string[];

function session(bytes: Uint8Array): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(bytes);
}

function f32(dims: number[], values: number[]): ort.Tensor {
  return new ort.Tensor('float32', Float32Array.from(values), dims);
}

function out(result: ort.InferenceSession.ReturnType, name: string): ort.Tensor {
  const t = result[name];
  if (!t) throw new Error(`missing output ${name}`);
  return t;
}

/** Six sample values per type (batch 2 × n 3), including each type's extremes. */
const SAMPLES: Record<ElemType, OrtData> = {
  bool: Uint8Array.from([1, 0, 1, 1, 0, 0]),
  int8: Int8Array.from([-128, -1, 0, 1, 2, 127]),
  uint8: Uint8Array.from([0, 1, 2, 128, 254, 255]),
  int16: Int16Array.from([-32768, -1, 0, 1, 300, 32767]),
  uint16: Uint16Array.from([0, 1, 2, 40000, 65534, 65535]),
  int32: Int32Array.from([-2147483648, -1, 0, 1, 70000, 2147483647]),
  uint32: Uint32Array.from([0, 1, 2, 3000000000, 4294967294, 4294967295]),
  int64: BigInt64Array.from([-(2n ** 63n), -1n, 0n, 1n, 2n ** 40n, 2n ** 63n - 1n]),
  uint64: BigUint64Array.from([0n, 1n, 2n, 2n ** 40n, 2n ** 63n, 2n ** 64n - 1n]),
  // IEEE half bits: 1, -2, 0.5, 0, 65504 (max), smallest subnormal.
  float16: Uint16Array.from([0x3c00, 0xc000, 0x3800, 0x0000, 0x7bff, 0x0001]),
  float32: Float32Array.from([-1.5, 0, 1e-30, 3.25, -3.4e38, Infinity]),
  float64: Float64Array.from([-1.5, 0, 1e-300, Math.PI, -1.7e308, -Infinity]),
  string: ['a', '', 'héllo', 'edge fleet', '🙂', 'z'],
};

describe('builder', () => {
  it('writes IR 8, opset 17 and symbolic dims', () => {
    const model = decodeModel(identityModel('float32'));
    expect(Number(model.irVersion)).toBe(8);
    expect(model.opsetImport.map((o) => [o.domain, Number(o.version)])).toEqual([['', 17]]);
    const dims = model.graph?.input?.[0]?.type?.tensorType?.shape?.dim ?? [];
    expect(dims.map((d) => d.dimParam)).toEqual(['batch', 'n']);
  });

  it('adds extra opset domains', () => {
    const bytes = buildModel({
      name: 'extra', inputs: [], outputs: [], nodes: [], opsets: { 'com.microsoft': 1 },
    });
    const domains = decodeModel(bytes).opsetImport.map((o) => o.domain);
    expect(domains).toEqual(['', 'com.microsoft']);
  });

  it('rejects initializer data that does not fit its type or dims', () => {
    const spec = (data: Float32Array | Float64Array) => ({
      name: 'bad', inputs: [], outputs: [], nodes: [],
      initializers: [{ name: 'w', type: 'float32' as const, dims: [2], data }],
    });
    expect(() => buildModel(spec(new Float64Array(2)))).toThrow(/Float32Array/);
    expect(() => buildModel(spec(new Float32Array(3)))).toThrow(/3 elements/);
  });

  it('maps element types to TensorProto.DataType codes', () => {
    expect(ELEM_TYPES).toHaveLength(13);
    expect(DATA_TYPE.float32).toBe(1);
    expect(DATA_TYPE.float16).toBe(10);
    expect(DATA_TYPE.uint64).toBe(13);
  });
});

describe('identity models round-trip every element type', () => {
  for (const type of ELEM_TYPES) {
    it(type, async () => {
      const s = await session(identityModel(type));
      const data = SAMPLES[type];
      const result = await s.run({ x: new ort.Tensor(type, data, [2, 3]) });
      const y = out(result, 'y');
      expect(y.type).toBe(type);
      expect(y.dims).toEqual([2, 3]);
      expect(Array.from(y.data as ArrayLike<unknown>)).toEqual(Array.from(data as ArrayLike<unknown>));
      await s.release();
    });
  }
});

describe('zoo models', () => {
  it('multiIo computes sum, product and argmax', async () => {
    const s = await session(multiIoModel());
    const a = [1, 2, 3, 4, -1, -2, -3, -4];
    const b = [0.5, 0.5, -5, 0, 10, 0, 0, 0];
    const r = await s.run({ a: f32([2, 4], a), b: f32([2, 4], b) });
    expect(Array.from(out(r, 'sum').data as Float32Array)).toEqual([1.5, 2.5, -2, 4, 9, -2, -3, -4]);
    expect(Array.from(out(r, 'product').data as Float32Array)).toEqual([0.5, 1, -15, 0, -10, -0, -0, -0]);
    const argmax = out(r, 'argmax');
    expect(argmax.type).toBe('int64');
    expect(argmax.dims).toEqual([2]);
    expect(Array.from(argmax.data as BigInt64Array)).toEqual([3n, 0n]);
    await s.release();
  });

  it('mlp yields non-degenerate probability rows', async () => {
    const s = await session(mlpModel());
    const rand = mulberry32(7);
    const x = Array.from({ length: 3 * 784 }, () => rand());
    const probs = out(await s.run({ x: f32([3, 784], x) }), 'probs');
    expect(probs.dims).toEqual([3, 10]);
    const data = probs.data as Float32Array;
    for (let row = 0; row < 3; row++) {
      const p = Array.from(data.subarray(row * 10, row * 10 + 10));
      expect(p.reduce((acc, v) => acc + v, 0)).toBeCloseTo(1, 5);
      expect(Math.max(...p) - Math.min(...p)).toBeGreaterThan(1e-3);
    }
    await s.release();
  });

  it('mlp is deterministic and accepts explicit weights', () => {
    const shape = { inputs: 8, hidden: 4, classes: 3 };
    const bySeed = mlpModel({ ...shape, seed: 5 });
    expect(mlpModel({ ...shape, seed: 5 })).toEqual(bySeed);
    expect(mlpModel({ ...shape, seed: 6 })).not.toEqual(bySeed);
    expect(mlpModel({ ...shape, weights: mlpWeights({ ...shape, seed: 5 }) })).toEqual(bySeed);
  });

  it('scaleModel multiplies by its factor', async () => {
    for (const factor of [1, 2, 3]) {
      const s = await session(scaleModel(factor));
      const y = out(await s.run({ x: f32([1, 3], [1, -2, 0.5]) }), 'y');
      expect(Array.from(y.data as Float32Array)).toEqual([factor, -2 * factor, 0.5 * factor]);
      await s.release();
    }
  });

  it('staticShapeModel runs [2, 3] and rejects [3, 3]', async () => {
    const s = await session(staticShapeModel());
    const y = out(await s.run({ x: f32([2, 3], [-1, 2, -3, 4, -5, 6]) }), 'y');
    expect(Array.from(y.data as Float32Array)).toEqual([0, 2, 0, 4, 0, 6]);
    await expect(s.run({ x: f32([3, 3], new Array<number>(9).fill(1)) })).rejects.toThrow(/invalid dimensions/);
    await s.release();
  });

  it('castModel returns FP32 and FP16 views of an FP16 input', async () => {
    const s = await session(castModel());
    const half = Uint16Array.from([0x3c00, 0xc000, 0x3800, 0x0000, 0x7bff, 0x0001]);
    const r = await s.run({ x: new ort.Tensor('float16', half, [2, 3]) });
    const y = out(r, 'y');
    expect(y.type).toBe('float32');
    expect(Array.from(y.data as Float32Array)).toEqual([1, -2, 0.5, 0, 65504, 2 ** -24]);
    const z = out(r, 'z');
    expect(z.type).toBe('float16');
    expect(Array.from(z.data as Uint16Array)).toEqual(Array.from(half));
    await s.release();
  });

  it('every ZOO entry loads into onnxruntime', async () => {
    for (const [name, entry] of Object.entries(ZOO)) {
      expect(entry.description, name).not.toBe('');
      const s = await session(entry.bytes());
      expect(s.inputNames.length, name).toBeGreaterThan(0);
      await s.release();
    }
  });
});

describe('writeModelTree', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'onnx-zoo-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes {dir}/{name}/{version}/model.onnx and leaves no temp files', async () => {
    const bytes = scaleModel(3);
    const file = await writeModelTree(dir, 'scale', 3, bytes);
    expect(file).toBe(path.join(dir, 'scale', '3', 'model.onnx'));
    expect(new Uint8Array(await readFile(file))).toEqual(bytes);
    await writeModelTree(dir, 'scale', 3, scaleModel(4));
    expect(await readdir(path.dirname(file))).toEqual(['model.onnx']);
  });
});
