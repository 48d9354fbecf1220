import { describe, expect, it } from 'vitest';
import { BUCKETS, LatencyHistogram } from '../agent/telemetry/histogram.js';
import { mulberry32 } from '../models/onnx/zoo.js';

/** A seeded PRNG so a failure can be replayed. */
const rng = mulberry32;

/** The exact value at quantile q: the ceil(q * n)-th smallest, as the histogram defines it. */
function exact(sorted: readonly number[], q: number): number {
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] ?? 0;
}

const DISTRIBUTIONS: Record<string, (r: () => number) => number> = {
  'uniform 0.1-5 ms': (r) => 0.1 + r() * 4.9,
  'log-normal around 0.4 ms': (r) => Math.exp(Math.log(0.4) + 0.6 * Math.sqrt(-2 * Math.log(r() || 1e-12)) * Math.cos(2 * Math.PI * r())),
  'bimodal 0.3 ms / 40 ms': (r) => (r() < 0.95 ? 0.3 + r() * 0.05 : 40 + r() * 10),
  'sub-millisecond 2-100 µs': (r) => 0.002 + r() * 0.098,
  'long tail up to 30 s': (r) => 1 / (r() + 1e-5) ** 0.8,
};

describe('LatencyHistogram', () => {
  for (const [name, draw] of Object.entries(DISTRIBUTIONS)) {
    it(`matches exact percentiles within 1% (+1 µs): ${name}`, () => {
      const r = rng(name.length * 7919);
      const h = new LatencyHistogram();
      const values: number[] = [];
      for (let i = 0; i < 50_000; i++) {
        const v = draw(r);
        values.push(v);
        h.record(v);
      }
      values.sort((a, b) => a - b);
      for (const q of [0.5, 0.9, 0.99, 0.999]) {
        const want = exact(values, q);
        expect(Math.abs(h.quantile(q) - want), `q=${q}: ${h.quantile(q)} vs ${want}`).toBeLessThanOrEqual(want * 0.01 + 0.001);
      }
      const s = h.summary();
      expect(s).not.toBeNull();
      expect(s?.max).toBeCloseTo(values[values.length - 1] ?? 0, 3);
      expect(s?.mean).toBeCloseTo(values.reduce((a, b) => a + b, 0) / values.length, 2);
      expect(h.count).toBe(values.length);
    });
  }

  it('reports null when empty, exact values for one sample, and clamps to min/max', () => {
    const h = new LatencyHistogram();
    expect(h.summary()).toBeNull();
    h.record(2.345);
    expect(h.summary()).toEqual({ p50: 2.345, p90: 2.345, p99: 2.345, max: 2.345, mean: 2.345 });
    h.reset();
    expect(h.count).toBe(0);
    expect(h.summary()).toBeNull();
  });

  it('treats NaN and negatives as 0 and clamps values beyond 71 minutes without wrapping', () => {
    const h = new LatencyHistogram();
    h.record(Number.NaN);
    h.record(-5);
    h.record(10 * 3600 * 1000); // 10 h
    expect(h.count).toBe(3);
    expect(h.quantile(0.5)).toBeLessThan(0.001);
    expect(h.quantile(1)).toBe(10 * 3600 * 1000);
    expect(BUCKETS).toBe(1728);
  });

  it('records in well under a microsecond (the hot path)', () => {
    const h = new LatencyHistogram();
    const values = Float64Array.from({ length: 1024 }, (_, i) => 0.05 + (i % 97) * 0.37);
    for (let i = 0; i < 200_000; i++) h.record(values[i & 1023] ?? 0); // warm up the JIT
    const n = 2_000_000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) h.record(values[i & 1023] ?? 0);
    const nsPerRecord = ((performance.now() - t0) * 1e6) / n;
    // Typically 5-15 ns; a predict request costs tens of microseconds.
    expect(nsPerRecord).toBeLessThan(250);
  });
});
