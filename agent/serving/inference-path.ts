import type { Logger } from 'pino';
import { errorMessage, failureKind } from '../errors.js';
import type { HostTensor } from '../runtime/tensor.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { InferenceRecorder } from '../telemetry/recorder.js';
import type { ModelRegistry, Selector } from './registry.js';
import type { Servable } from './servable.js';
import type { ShadowTap } from './shadow/tap.js';

/**
 * A request read and checked against the model, ready to run: the tensors to
 * feed, the outputs to fetch, and how to answer with the results in the
 * request's own API and format (`A`: an HTTP body, a protobuf message).
 */
export interface PreparedInfer<A> {
  inputs: readonly HostTensor[];
  /** Undefined: every output. */
  outputs: readonly string[] | undefined;
  answer(outputs: readonly HostTensor[]): A;
}

/** One inference request as an API (HTTP, gRPC) hands it over. */
export interface InferCall<A> {
  model: string;
  selector: Selector;
  /** The `api` label of the request metrics: v1, v2, grpc-tf, grpc-v2. */
  api: string;
  /** performance.now() when the request arrived. */
  started: number;
  /** For the log: the URL or gRPC method. */
  where: string;
  /** Reads the request against the acquired version; throws a client's mistake. */
  prepare(servable: Servable): PreparedInfer<A>;
  /** Sends the answer; may throw (then `fail` gets the error). */
  send(answer: A): void;
  /** Sends the error in the API's form; returns the HTTP status it means, for the metrics. */
  fail(err: unknown): number;
  /** Runs once, after the answer or the error, whatever happened. */
  done(): void;
  /** When answering or counting failed: logs, and answers with an internal error if it still can. Never throws. */
  lastResort(fatal: unknown): void;
}

export interface InferencePathOptions {
  registry: ModelRegistry;
  metrics: Metrics;
  /** Per model version request statistics for MQTT telemetry; absent without MQTT. */
  telemetry?: Pick<InferenceRecorder, 'record'>;
  /** Where a shadow candidate running beside the answered version sees the request (section 11). */
  shadows?: Pick<ShadowTap, 'offer'>;
  logger: Logger;
}

/**
 * The inference path every API shares: resolve and hold the version, read the
 * request, run it (batched or not), answer, and count the outcome once in the
 * metrics, the telemetry and the log. Written with callbacks rather than async
 * functions: it runs for every request, and each await costs a promise and a
 * microtask turn.
 */
export class InferencePath {
  constructor(private readonly options: InferencePathOptions) {}

  /**
   * Acquiring may throw (unknown model or version: the caller answers it, as for
   * any request that never reached a model); after that, every outcome goes
   * through finish() exactly once.
   */
  run<A>(call: InferCall<A>): void {
    const { registry, metrics, telemetry, shadows, logger } = this.options;
    const servable = registry.acquire(call.model, call.selector);
    const series = metrics.forRequest(call.model, servable.version, call.api);
    const finish = (err: unknown): void => {
      // Never throws: it runs in promise callbacks, where a throw would take the process down.
      servable.release();
      try {
        let status = 200;
        if (err !== undefined) status = call.fail(err);
        if (status === 200) series.ok.inc();
        else series.status(status).inc();
        const latencyMs = performance.now() - call.started;
        series.duration.observe(latencyMs / 1000);
        const outcome = err === undefined ? 'ok' : failureKind(err);
        telemetry?.record(call.model, servable.version, outcome, latencyMs);
        // Faults of the model or the agent are logged; a client's input and load (a full batch queue) would flood the log.
        if (outcome === 'model-fault' || outcome === 'internal') logger.error({ url: call.where, err: errorMessage(err) }, 'inference request failed');
      } catch (fatal) {
        call.lastResort(fatal);
      }
      call.done();
    };
    let prepared: PreparedInfer<A>;
    try {
      prepared = call.prepare(servable);
    } catch (err) {
      return finish(err);
    }
    servable.infer(prepared.inputs, prepared.outputs).then(
      (result) => {
        try {
          const answer = prepared.answer(result.value);
          series.queue.observe(result.queueMs / 1000);
          series.compute.observe(result.computeMs / 1000);
          call.send(answer);
        } catch (err) {
          return finish(err);
        }
        finish(undefined);
        // The answer is out: a shadow candidate, if one runs for this version, may now see the request.
        shadows?.offer(servable, prepared.inputs, prepared.outputs, result);
      },
      (err: unknown) => finish(err),
    );
  }
}
