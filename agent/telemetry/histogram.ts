/**
 * A fixed-bucket log-linear latency histogram (the HdrHistogram layout),
 * cheap enough to record on every request: one Uint32Array of counts, no
 * allocation per record, a handful of integer operations.
 *
 * Values are whole microseconds. Below 2 * SUB (128 µs) every microsecond has
 * its own bucket; above, each power of two is cut into SUB (64) equal
 * buckets, so a bucket is at most 1/64 (1.6 %) of its value wide and the
 * bucket midpoint reported is within 0.8 % of any value in it. Values are
 * clamped at 2^32 - 1 µs (about 71 minutes); the exact max is kept apart.
 */

const SUB_BITS = 6;
const SUB = 1 << SUB_BITS; // 64 buckets per power of two
const LINEAR = SUB * 2; // values below this are exact
const MAX_US = 0xffffffff;
/** Buckets for values up to 2^32: the linear part plus SUB per further octave. */
export const BUCKETS = LINEAR + (32 - (SUB_BITS + 1)) * SUB;

export interface LatencySummary {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** The bucket holding `us` (an integer in [0, 2^32)). */
function bucketOf(us: number): number {
  if (us < LINEAR) return us;
  const octave = 31 - Math.clz32(us); // floor(log2 us) >= SUB_BITS + 1
  const shift = octave - SUB_BITS;
  return shift * SUB + (us >>> shift);
}

/** The midpoint of bucket `index`, in microseconds. */
function bucketMidpoint(index: number): number {
  if (index < LINEAR) return index + 0.5;
  const shift = (index >> SUB_BITS) - 1;
  const width = 2 ** shift;
  return (index - shift * SUB) * width + width / 2;
}

export class LatencyHistogram {
  private readonly counts = new Uint32Array(BUCKETS);
  private total = 0;
  private sumMs = 0;
  private minMs = Infinity;
  private maxMs = 0;

  get count(): number {
    return this.total;
  }

  /** Hot path: records one latency in milliseconds. NaN and negatives count as 0. */
  record(latencyMs: number): void {
    const ms = latencyMs >= 0 ? latencyMs : 0;
    // `>>> 0` truncates to uint32; clamp first so large values do not wrap.
    const us = ms >= MAX_US / 1000 ? MAX_US : (ms * 1000) >>> 0;
    const bucket = bucketOf(us);
    this.counts[bucket] = this.counts[bucket]! + 1;
    this.total++;
    this.sumMs += ms;
    if (ms > this.maxMs) this.maxMs = ms;
    if (ms < this.minMs) this.minMs = ms;
  }

  /**
   * The value at quantile `q` (0 < q <= 1) in ms: the midpoint of the bucket
   * holding the ceil(q * count)-th smallest value, clamped to the exact
   * min and max so p99 never reads above the slowest request.
   */
  quantile(q: number): number {
    return this.quantiles([q])[0] ?? 0;
  }

  /** Several quantiles (ascending) in one pass over the buckets. */
  quantiles(qs: readonly number[]): number[] {
    const out: number[] = [];
    if (this.total === 0) return qs.map(() => 0);
    let seen = 0;
    let next = 0;
    for (let i = 0; i < BUCKETS && next < qs.length; i++) {
      seen += this.counts[i] ?? 0;
      while (next < qs.length && seen >= Math.max(1, Math.ceil((qs[next] ?? 1) * this.total))) {
        // The last bucket holds every clamped value: only the exact max describes it.
        const ms = i === BUCKETS - 1 ? this.maxMs : bucketMidpoint(i) / 1000;
        out.push(Math.min(this.maxMs, Math.max(this.minMs, ms)));
        next++;
      }
    }
    while (out.length < qs.length) out.push(this.maxMs);
    return out;
  }

  /** p50/p90/p99/max/mean in ms, rounded to the microsecond; null when empty. */
  summary(): LatencySummary | null {
    if (this.total === 0) return null;
    const [p50 = 0, p90 = 0, p99 = 0] = this.quantiles([0.5, 0.9, 0.99]);
    return { p50: round3(p50), p90: round3(p90), p99: round3(p99), max: round3(this.maxMs), mean: round3(this.sumMs / this.total) };
  }

  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.sumMs = 0;
    this.minMs = Infinity;
    this.maxMs = 0;
  }
}

const round3 = (ms: number): number => Math.round(ms * 1000) / 1000;
