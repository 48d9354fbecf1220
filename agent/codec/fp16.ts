/**
 * IEEE 754 binary16 ("half") conversion. FP16 tensors are stored as their raw
 * 16-bit patterns (Uint16Array), as onnxruntime-node keeps them; JSON carries
 * ordinary numbers, so conversion happens only at the JSON boundary.
 *
 * Encoding rounds the exact JS number (a double) to nearest, ties to even, in a
 * single step: going through Math.fround first would round twice and could be
 * off by one ulp. Float32Array values are doubles exactly, so they round correctly.
 */

// Scratch views to read a double's bit pattern without allocating.
const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const HI = LITTLE_ENDIAN ? 1 : 0;
const LO = 1 - HI;

/** Adding then subtracting 2^52 rounds a small non-negative double to an integer, ties to even. */
const ROUND = 2 ** 52;
const MIN_NORMAL = 2 ** -14;
/** Halfway between the largest half (65504) and 2^16: this and above round to Infinity. */
const OVERFLOW = 65520;

/** 2^(e - 25) for a half's biased exponent e, so (1024 + mantissa) * POW[e] is its value. */
const POW = Array.from({ length: 32 }, (_, e) => 2 ** (e - 25));

/** The half nearest to `x` (ties to even), as its 16-bit pattern. NaN → quiet NaN 0x7e00. */
export function floatToHalf(x: number): number {
  f64[0] = x;
  const hi = u32[HI] ?? 0;
  const sign = (hi >>> 16) & 0x8000;
  const a = Math.abs(x);
  if (a >= OVERFLOW) return sign | 0x7c00;
  if (a !== a) return sign | 0x7e00;
  // Subnormal or zero: the mantissa is a * 2^24 rounded (1024 carries into the smallest normal).
  if (a < MIN_NORMAL) return sign | (a * 16777216 + ROUND - ROUND);
  const lo = u32[LO] ?? 0;
  // Rebias the exponent (1023 → 15) and keep the top 10 mantissa bits.
  let h = ((((hi >>> 20) & 0x7ff) - 1008) << 10) | ((hi >>> 10) & 0x3ff);
  // Round bit is mantissa bit 9 of the high word; everything below it is sticky.
  if ((hi & 0x200) !== 0 && ((hi & 0x1ff) !== 0 || lo !== 0 || (h & 1) !== 0)) h++;
  return sign | h;
}

/** The exact value of a half given as its 16-bit pattern. */
export function halfToFloat(h: number): number {
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  let v: number;
  if (e === 0) v = m * 2 ** -24;
  else if (e === 31) v = m === 0 ? Infinity : NaN;
  else v = (1024 + m) * (POW[e] ?? 0);
  return (h & 0x8000) !== 0 ? -v : v;
}

/** Decodes half bit patterns; every half is exact in a Float32Array. */
export function halfArrayToFloat(
  src: ArrayLike<number>,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i] ?? 0);
  return out;
}
