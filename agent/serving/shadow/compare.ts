import { halfArrayToFloat } from '../../codec/fp16.js';
import type { HostTensor } from '../../runtime/tensor.js';

/**
 * How a shadow candidate's answer is compared with the served one
 * (docs/protocol.md section 11). Pure: no I/O, no clock.
 */
export interface CompareSpec {
  compare: 'argmax' | 'allclose';
  atol: number;
  rtol: number;
}

export interface Comparison {
  agree: boolean;
  /** Largest |candidate - served| over the numeric elements compared; undefined when none were. */
  maxAbsDiff: number | undefined;
}

/**
 * Compares every output the served version answered with the candidate's
 * output of the same name. A missing output or another shape disagrees.
 *
 * - `argmax`: per output row (the first dimension; a tensor of rank 0 or 1 is
 *   one row), the index of the largest value must be the same. Ties go to the
 *   first index, NaN never wins.
 * - `allclose`: every element within `atol + rtol * |served|`; equal values
 *   (infinities included) and NaN against NaN agree.
 *
 * Both read FP16 as its value and 64-bit integers as numbers. BYTES outputs
 * must be equal element by element in either mode (argmax means nothing for text).
 */
export function compareOutputs(served: readonly HostTensor[], candidate: readonly HostTensor[], spec: CompareSpec): Comparison {
  let agree = true;
  let maxAbsDiff: number | undefined;
  for (const s of served) {
    const c = candidate.find((t) => t.name === s.name);
    if (!c || !sameShape(s.shape, c.shape)) {
      agree = false;
      continue;
    }
    const a = numbers(s);
    const b = numbers(c);
    if (a === undefined || b === undefined) {
      if (!sameText(s.data, c.data)) agree = false;
      continue;
    }
    const diff = maxDiff(a, b);
    if (diff !== undefined) maxAbsDiff = Math.max(maxAbsDiff ?? 0, diff);
    const ok = spec.compare === 'argmax' ? sameArgmax(a, b, rowsOf(s.shape)) : allClose(a, b, spec.atol, spec.rtol);
    if (!ok) agree = false;
  }
  return { agree, maxAbsDiff };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

type Numbers = ArrayLike<number>;

/** The elements as numbers; undefined for BYTES (text). */
function numbers(t: HostTensor): Numbers | undefined {
  const { data } = t;
  if (Array.isArray(data)) return undefined;
  if (t.datatype === 'FP16') return halfArrayToFloat(data as Uint16Array);
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) return Float64Array.from(data, Number);
  return data;
}

function sameText(a: HostTensor['data'], b: HostTensor['data']): boolean {
  return a.length === b.length && Array.from(a as ArrayLike<unknown>).every((v, i) => v === (b as ArrayLike<unknown>)[i]);
}

/** Rows for argmax: the first dimension of a tensor of rank 2 or more, else one. */
function rowsOf(shape: readonly number[]): number {
  return shape.length >= 2 ? (shape[0] ?? 1) : 1;
}

function maxDiff(a: Numbers, b: Numbers): number | undefined {
  let max: number | undefined;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    if (x === y) {
      max = Math.max(max ?? 0, 0);
      continue;
    }
    const d = Math.abs(x - y);
    // NaN (a NaN element, or infinities that differ) says nothing about size; it still disagrees in allclose.
    if (!Number.isNaN(d)) max = Math.max(max ?? 0, d);
  }
  return max;
}

function allClose(served: Numbers, candidate: Numbers, atol: number, rtol: number): boolean {
  for (let i = 0; i < served.length; i++) {
    const s = served[i] as number;
    const c = candidate[i] as number;
    if (s === c || (Number.isNaN(s) && Number.isNaN(c))) continue;
    if (!(Math.abs(c - s) <= atol + rtol * Math.abs(s))) return false;
  }
  return true;
}

function sameArgmax(a: Numbers, b: Numbers, rows: number): boolean {
  if (a.length === 0) return true;
  const width = a.length / rows;
  for (let r = 0; r < rows; r++) {
    if (argmax(a, r * width, width) !== argmax(b, r * width, width)) return false;
  }
  return true;
}

/** Index of the largest value in a[from, from + width); the first on ties; -1 when every value is NaN. */
export function argmax(a: Numbers, from: number, width: number): number {
  let best = -1;
  let value = -Infinity;
  for (let i = 0; i < width; i++) {
    const v = a[from + i] as number;
    if (v > value || (best === -1 && v === -Infinity)) {
      best = i;
      value = v;
    }
  }
  return best;
}
