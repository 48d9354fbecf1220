import type { Logger } from 'pino';
import type { Shadow } from '../../../protocol/desired.js';
import { formatTime } from '../../../protocol/index.js';
import { errorMessage } from '../../errors.js';
import type { Timed } from '../../runtime/batcher.js';
import type { HostTensor } from '../../runtime/tensor.js';
import { LatencyHistogram } from '../../telemetry/histogram.js';
import type { NewPoint, PointSink } from '../../telemetry/points.js';
import type { Servable } from '../servable.js';
import { compareOutputs } from './compare.js';

/** Shadow runs in flight at once per evaluation: a slow candidate makes samples be skipped, never queued. */
export const SHADOW_IN_FLIGHT = 1;

export interface ShadowFigures {
  samples: number;
  agreed: number;
  /** agreed / samples, rounded to 4 decimals; null before the first sample. */
  agreement: number | null;
}

export type ShadowVerdict = 'activated' | 'rejected';

export interface ShadowOutcome extends ShadowFigures {
  /** `cancelled`: the evaluation was stopped (a newer document, the agent stopping) before a verdict. */
  verdict: ShadowVerdict | 'cancelled';
  /** Why, in words an operator can act on. */
  reason: string;
}

export interface ShadowEvaluationOptions {
  name: string;
  version: number;
  baseVersion: number;
  /** Loaded, self-tested and warm, but not in the registry: no request is routed to it. */
  candidate: Servable;
  spec: Shadow;
  /** Where `shadow` telemetry points go (the outbox); absent, none are made. */
  sink: PointSink | undefined;
  /** Seconds between points while it runs. */
  intervalS: number;
  logger: Logger;
  /** Each comparison done (for reported progress). */
  onProgress?: (figures: ShadowFigures) => void;
  /** Sampling draw, for tests; Math.random by default. */
  random?: () => number;
}

/**
 * One candidate version evaluated on a share of live requests beside the
 * version that serves them (docs/protocol.md section 11). The served answer
 * has gone out before `offer` is called; the candidate runs the same inputs
 * afterwards, at most SHADOW_IN_FLIGHT at a time, and the two answers are
 * compared. The verdict comes at `minSamples` comparisons, or when
 * `maxDurationS` runs out (`onTimeout`).
 */
export class ShadowEvaluation {
  readonly done: Promise<ShadowOutcome>;
  private resolve!: (outcome: ShadowOutcome) => void;
  private samples = 0;
  private agreed = 0;
  /** Sampled requests not run because the candidate was busy. */
  private skipped = 0;
  /** Candidate runs that failed where the served version answered (each counts as a disagreement). */
  private candidateErrors = 0;
  private maxAbsDiff: number | undefined;
  private inFlight = 0;
  private finished = false;
  private readonly latency = new LatencyHistogram();
  private readonly baseLatency = new LatencyHistogram();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly random: () => number;
  private failureLogged = false;

  constructor(private readonly o: ShadowEvaluationOptions) {
    this.random = o.random ?? Math.random;
    this.done = new Promise((resolve) => (this.resolve = resolve));
    const timeout = setTimeout(() => this.timedOut(), o.spec.maxDurationS * 1000);
    const interval = setInterval(() => this.report(null), o.intervalS * 1000);
    timeout.unref();
    interval.unref();
    this.timers.push(timeout, interval);
  }

  get name(): string {
    return this.o.name;
  }

  get baseVersion(): number {
    return this.o.baseVersion;
  }

  get figures(): ShadowFigures {
    const { samples, agreed } = this;
    return { samples, agreed, agreement: samples === 0 ? null : round4(agreed / samples) };
  }

  /**
   * A request the base version has answered (the answer is sent). Sampled at
   * `sampleRate`; skipped when the candidate is busy. Never throws.
   */
  offer(inputs: readonly HostTensor[], outputNames: readonly string[] | undefined, served: Timed<HostTensor[]>): void {
    if (this.finished || this.random() >= this.o.spec.sampleRate) return;
    if (this.inFlight >= SHADOW_IN_FLIGHT) {
      this.skipped++;
      return;
    }
    const { candidate } = this.o;
    this.inFlight++;
    candidate.acquire();
    const started = performance.now();
    let run: Promise<Timed<HostTensor[]>>;
    try {
      run = candidate.infer(inputs, outputNames);
    } catch (err) {
      run = Promise.reject(err instanceof Error ? err : new Error(errorMessage(err)));
    }
    run
      .then(
        (answer) => this.compared(served, answer.value, performance.now() - started),
        (err: unknown) => this.failed(served, err, performance.now() - started),
      )
      .catch((err: unknown) => this.o.logger.error({ err: errorMessage(err) }, 'shadow comparison failed'))
      .finally(() => {
        this.inFlight--;
        candidate.release();
      });
  }

  /** Stops without a verdict; a run in flight finishes but counts for nothing. */
  cancel(reason: string): void {
    this.finish('cancelled', reason, false);
  }

  private compared(served: Timed<HostTensor[]>, answer: readonly HostTensor[], ms: number): void {
    if (this.finished) return;
    let comparison;
    try {
      comparison = compareOutputs(served.value, answer, this.o.spec);
    } catch (err) {
      // Runs in a promise callback: a throw here would be an unhandled rejection.
      this.failed(served, err, ms);
      return;
    }
    if (comparison.maxAbsDiff !== undefined) this.maxAbsDiff = Math.max(this.maxAbsDiff ?? 0, comparison.maxAbsDiff);
    this.count(comparison.agree, served, ms);
  }

  private failed(served: Timed<HostTensor[]>, err: unknown, ms: number): void {
    if (this.finished) return;
    this.candidateErrors++;
    if (!this.failureLogged) {
      this.failureLogged = true;
      this.o.logger.warn({ err: errorMessage(err) }, 'shadow candidate failed on a request the serving version answered; counted as a disagreement (logged once)');
    }
    this.count(false, served, ms);
  }

  private count(agree: boolean, served: Timed<HostTensor[]>, ms: number): void {
    this.samples++;
    if (agree) this.agreed++;
    this.latency.record(ms);
    this.baseLatency.record(served.queueMs + served.computeMs);
    this.o.onProgress?.(this.figures);
    if (this.samples < this.o.spec.minSamples) return;
    const { agreement } = this.figures;
    const ratio = this.agreed / this.samples;
    const { minAgreement } = this.o.spec;
    const figures = `agreement ${agreement} (${this.agreed} of ${this.samples} samples, compare ${this.o.spec.compare})`;
    if (ratio >= minAgreement) this.finish('activated', `${figures} is at or above minAgreement ${minAgreement}`);
    else this.finish('rejected', `${figures} is below minAgreement ${minAgreement}`);
  }

  private timedOut(): void {
    const { maxDurationS, onTimeout, minSamples } = this.o.spec;
    const { agreement } = this.figures;
    const figures = `${this.samples} of ${minSamples} samples in maxDurationS ${maxDurationS} s (agreement ${agreement ?? 'none'}${this.skipped > 0 ? `, ${this.skipped} sampled requests skipped while the candidate was busy` : ''})`;
    this.finish(onTimeout === 'activate' ? 'activated' : 'rejected', `${figures}; onTimeout ${onTimeout}`);
  }

  private finish(verdict: ShadowOutcome['verdict'], reason: string, report = true): void {
    if (this.finished) return;
    this.finished = true;
    for (const t of this.timers) clearTimeout(t);
    if (report && verdict !== 'cancelled') this.report(verdict);
    this.o.logger.info({ verdict, ...this.figures, skipped: this.skipped, candidateErrors: this.candidateErrors }, `shadow evaluation ${verdict}: ${reason}`);
    this.resolve({ verdict, reason, ...this.figures });
  }

  /** A `shadow` point: figures since the evaluation began. */
  private report(verdict: ShadowVerdict | null): void {
    const { sink, name, version, baseVersion } = this.o;
    if (!sink) return;
    const point: NewPoint = {
      ts: formatTime(),
      kind: 'shadow',
      model: name,
      version,
      baseVersion,
      ...this.figures,
      maxAbsDiff: this.maxAbsDiff === undefined ? null : round6(this.maxAbsDiff),
      latencyMs: p50p99(this.latency),
      baseLatencyMs: p50p99(this.baseLatency),
      verdict,
      skipped: this.skipped,
      candidateErrors: this.candidateErrors,
    };
    try {
      sink.append([point]);
    } catch (err) {
      this.o.logger.error({ err: errorMessage(err) }, 'could not store a shadow telemetry point; point lost');
    }
  }
}

function p50p99(h: LatencyHistogram): { p50: number; p99: number } | null {
  const s = h.summary();
  return s && { p50: s.p50, p99: s.p99 };
}

const round4 = (x: number): number => Math.round(x * 10_000) / 10_000;
const round6 = (x: number): number => Math.round(x * 1e6) / 1e6;
