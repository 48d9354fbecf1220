import type { Logger } from 'pino';
import type { Timed } from '../../runtime/batcher.js';
import type { HostTensor } from '../../runtime/tensor.js';
import type { PointSink } from '../../telemetry/points.js';
import type { Servable } from '../servable.js';
import { ShadowEvaluation, type ShadowEvaluationOptions } from './evaluation.js';

export interface ShadowTapOptions {
  /** Where `shadow` telemetry points go; absent (no MQTT), none are made. */
  sink: PointSink | undefined;
  /** telemetry.intervalS: a point every this many seconds while an evaluation runs. */
  intervalS: number;
  logger: Logger;
}

/**
 * Where the request path hands answered requests to running shadow
 * evaluations (docs/protocol.md section 11), at most one per model name. The
 * HTTP API calls `offer` after each answer has been sent; the rollout starts
 * evaluations with `begin`. Without one running, `offer` is one size check.
 */
export class ShadowTap {
  private readonly running = new Map<string, ShadowEvaluation>();

  constructor(private readonly o: ShadowTapOptions) {}

  /** Starts evaluating a candidate of `name` against `baseVersion`; replaces (cancels) one running for that name. */
  begin(options: Omit<ShadowEvaluationOptions, 'sink' | 'intervalS' | 'logger'>): ShadowEvaluation {
    this.running.get(options.name)?.cancel('another evaluation of the model began');
    const logger = this.o.logger.child({ model: options.name, version: options.version, baseVersion: options.baseVersion });
    const evaluation = new ShadowEvaluation({ ...options, sink: this.o.sink, intervalS: this.o.intervalS, logger });
    this.running.set(options.name, evaluation);
    void evaluation.done.then(() => {
      if (this.running.get(options.name) === evaluation) this.running.delete(options.name);
    });
    return evaluation;
  }

  /** The evaluation running for `name`, if any. */
  evaluationOf(name: string): ShadowEvaluation | undefined {
    return this.running.get(name);
  }

  /** Hot path: a request `servable` has answered. Only the base version's answers are sampled. */
  offer(servable: Servable, inputs: readonly HostTensor[], outputNames: readonly string[] | undefined, served: Timed<HostTensor[]>): void {
    if (this.running.size === 0) return;
    const evaluation = this.running.get(servable.name);
    if (evaluation?.baseVersion === servable.version) evaluation.offer(inputs, outputNames, served);
  }
}
