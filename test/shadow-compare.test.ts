import { describe, expect, it } from 'vitest';
import { floatToHalf } from '../agent/codec/fp16.js';
import type { HostTensor } from '../agent/runtime/tensor.js';
import { argmax, compareOutputs, type CompareSpec } from '../agent/serving/shadow/compare.js';

const ARGMAX: CompareSpec = { compare: 'argmax', atol: 1e-4, rtol: 1e-3 };
const ALLCLOSE: CompareSpec = { compare: 'allclose', atol: 1e-4, rtol: 1e-3 };

const fp32 = (shape: number[], data: number[], name = 'y'): HostTensor => ({ name, datatype: 'FP32', shape, data: Float32Array.from(data) });

describe('compareOutputs', () => {
  it('argmax agrees per row when the largest index is the same, whatever the values', () => {
    const served = [fp32([2, 3], [0.1, 0.7, 0.2, 0.5, 0.3, 0.2])];
    const candidate = [fp32([2, 3], [0.2, 0.4, 0.4 - 1e-3, 0.9, 0.05, 0.05])];
    expect(compareOutputs(served, candidate, ARGMAX)).toEqual({ agree: true, maxAbsDiff: expect.closeTo(0.4, 5) as number });
    expect(compareOutputs(served, candidate, ALLCLOSE).agree).toBe(false);
  });

  it('argmax disagrees when any one row picks another index', () => {
    const served = [fp32([2, 2], [1, 0, 0, 1])];
    expect(compareOutputs(served, [fp32([2, 2], [1, 0, 1, 0])], ARGMAX).agree).toBe(false);
  });

  it('a tensor of rank 0 or 1 is one row', () => {
    expect(compareOutputs([fp32([3], [1, 5, 2])], [fp32([3], [0, 9, 1])], ARGMAX).agree).toBe(true);
    expect(compareOutputs([fp32([3], [1, 5, 2])], [fp32([3], [9, 5, 1])], ARGMAX).agree).toBe(false);
  });

  it('allclose allows atol + rtol * |served| and no more', () => {
    const spec: CompareSpec = { compare: 'allclose', atol: 0.01, rtol: 0.1 };
    // |100| * 0.1 + 0.01 = 10.01
    expect(compareOutputs([fp32([1, 2], [100, 0])], [fp32([1, 2], [110, 0.009])], spec).agree).toBe(true);
    expect(compareOutputs([fp32([1, 2], [100, 0])], [fp32([1, 2], [110.1, 0])], spec).agree).toBe(false);
    expect(compareOutputs([fp32([1, 2], [100, 0])], [fp32([1, 2], [100, 0.011])], spec).agree).toBe(false);
  });

  it('NaN agrees with NaN in allclose and never wins an argmax; equal infinities agree', () => {
    expect(compareOutputs([fp32([1, 2], [NaN, Infinity])], [fp32([1, 2], [NaN, Infinity])], ALLCLOSE)).toEqual({ agree: true, maxAbsDiff: 0 });
    expect(compareOutputs([fp32([1, 2], [NaN, 1])], [fp32([1, 2], [0, 1])], ALLCLOSE).agree).toBe(false);
    expect(argmax(Float32Array.from([NaN, 2, 3, NaN]), 0, 4)).toBe(2);
    expect(argmax(Float32Array.from([-Infinity, -Infinity]), 0, 2)).toBe(0);
    expect(argmax(Float32Array.from([NaN, NaN]), 0, 2)).toBe(-1);
  });

  it('ties go to the first index in both answers', () => {
    expect(compareOutputs([fp32([1, 3], [1, 1, 0])], [fp32([1, 3], [2, 2, 0])], ARGMAX).agree).toBe(true);
  });

  it('a missing output or another shape disagrees; outputs are matched by name, not position', () => {
    const served = [fp32([1, 2], [1, 2], 'a'), fp32([1, 2], [3, 4], 'b')];
    expect(compareOutputs(served, [fp32([1, 2], [3, 4], 'b'), fp32([1, 2], [1, 2], 'a')], ALLCLOSE).agree).toBe(true);
    expect(compareOutputs(served, [fp32([1, 2], [1, 2], 'a')], ALLCLOSE).agree).toBe(false);
    expect(compareOutputs([fp32([1, 2], [1, 2])], [fp32([2, 1], [1, 2])], ALLCLOSE).agree).toBe(false);
  });

  it('reads FP16 as its value, 64-bit integers as numbers, and BYTES element by element', () => {
    const half = (xs: number[]): HostTensor => ({ name: 'h', datatype: 'FP16', shape: [1, xs.length], data: Uint16Array.from(xs, floatToHalf) });
    expect(compareOutputs([half([0.5, 2])], [half([0.5, 2])], ALLCLOSE)).toEqual({ agree: true, maxAbsDiff: 0 });
    expect(compareOutputs([half([0.5, 2])], [half([0.5, 3])], ALLCLOSE)).toEqual({ agree: false, maxAbsDiff: 1 });
    const i64 = (xs: bigint[]): HostTensor => ({ name: 'i', datatype: 'INT64', shape: [1, xs.length], data: BigInt64Array.from(xs) });
    expect(compareOutputs([i64([1n, 7n])], [i64([1n, 9n])], ARGMAX)).toEqual({ agree: true, maxAbsDiff: 2 });
    const text = (xs: string[]): HostTensor => ({ name: 't', datatype: 'BYTES', shape: [xs.length], data: xs });
    expect(compareOutputs([text(['a', 'b'])], [text(['a', 'b'])], ARGMAX)).toEqual({ agree: true, maxAbsDiff: undefined });
    expect(compareOutputs([text(['a', 'b'])], [text(['a', 'c'])], ALLCLOSE).agree).toBe(false);
  });

  it('an empty output agrees', () => {
    expect(compareOutputs([fp32([0, 3], [])], [fp32([0, 3], [])], ARGMAX)).toEqual({ agree: true, maxAbsDiff: undefined });
  });
});
