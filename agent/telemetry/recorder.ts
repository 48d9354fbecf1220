import type { Logger } from 'pino';
import { formatTime } from '../../protocol/index.js';
import { errorMessage, type FailureKind } from '../errors.js';
import { LatencyHistogram } from './histogram.js';
import type { NewPoint, PointSink } from './points.js';

/**
 * Per model version request statistics, cut into "inference" points every
 * interval (docs/protocol.md section 7).
 *
 * What counts: every request answered for a resolved model version counts
 * in `count` and in the latency histogram (as the Prometheus request
 * histogram does, so the two agree). Each failure counts by its one
 * classification (FailureKind, agent/errors.ts): `errors` counts model
 * faults, overload and the agent's own faults, what alerts care about. A
 * client's input (malformed, wrong shape, refused by the model) is the
 * client's mistake, not the version's, so it is counted apart in
 * `clientErrors` and never in `errors`. Requests that fail before a version
 * is known (unknown model, 503 before acquire) belong to no series and are
 * not recorded.
 */

/** How an answered request ended: served, or the kind of its failure. */
export type Outcome = 'ok' | FailureKind;

export interface InferenceRecorderOptions {
  sink: PointSink;
  /** Seconds between points. */
  intervalS: number;
  logger: Logger;
}

/** Intervals without requests after which a series is forgotten (a retired version). */
const FORGET_AFTER_IDLE = 6;

class Series {
  readonly histogram = new LatencyHistogram();
  errors = 0;
  clientErrors = 0;
  idle = 0;
  constructor(
    readonly model: string,
    readonly version: number,
  ) {}
}

export class InferenceRecorder {
  /** model → version → series: two lookups, no key string built per request. */
  private readonly series = new Map<string, Map<number, Series>>();
  private timer: NodeJS.Timeout | undefined;
  private intervalStart = Date.now();

  constructor(private readonly options: InferenceRecorderOptions) {}

  /** Hot path: one answered request. Allocates only for a version's first request. */
  record(model: string, version: number, outcome: Outcome, latencyMs: number): void {
    let versions = this.series.get(model);
    if (versions === undefined) {
      versions = new Map();
      this.series.set(model, versions);
    }
    let series = versions.get(version);
    if (series === undefined) {
      series = new Series(model, version);
      versions.set(version, series);
    }
    series.histogram.record(latencyMs);
    if (outcome === 'client-input') series.clientErrors++;
    else if (outcome !== 'ok') series.errors++;
  }

  async start(): Promise<void> {
    this.intervalStart = Date.now();
    this.timer = setInterval(() => this.cut(), this.options.intervalS * 1000);
    this.timer.unref();
  }

  /** Stops the interval and cuts a final, shorter point so the last requests are not lost. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.cut();
  }

  /** Turns what was recorded since the last cut into points and hands them to the sink. */
  cut(): void {
    const now = Date.now();
    const intervalS = Math.max(0.001, (now - this.intervalStart) / 1000);
    this.intervalStart = now;
    const points = this.takePoints(formatTime(now), Math.round(intervalS * 1000) / 1000);
    if (points.length === 0) return;
    try {
      this.options.sink.append(points);
    } catch (err) {
      // Nothing to retry into: the database is the buffer. Say what was lost.
      this.options.logger.error({ err: errorMessage(err), points: points.length }, 'could not store inference telemetry; points lost');
    }
  }

  private takePoints(ts: string, intervalS: number): NewPoint[] {
    const points: NewPoint[] = [];
    for (const [model, versions] of this.series) {
      for (const [version, s] of versions) {
        const count = s.histogram.count;
        if (count === 0) {
          if (++s.idle >= FORGET_AFTER_IDLE) versions.delete(version);
          continue;
        }
        points.push({
          ts,
          kind: 'inference',
          model: s.model,
          version: s.version,
          intervalS,
          count,
          errors: s.errors,
          clientErrors: s.clientErrors,
          latencyMs: s.histogram.summary(),
        });
        s.histogram.reset();
        s.errors = 0;
        s.clientErrors = 0;
        s.idle = 0;
      }
      if (versions.size === 0) this.series.delete(model);
    }
    return points;
  }
}
