import type { BatchingConfig } from '../config/schema.js';
import { Batcher, canBatch, type Timed } from './batcher.js';
import { RunFailure, runFailure } from './run-failure.js';
import type { ModelSession } from './session.js';
import { disagreement } from './shared-dims.js';
import type { HostTensor } from './tensor.js';

/**
 * Runs requests on one model version, batched where the model allows. Every
 * failure leaves here classified once (run-failure.ts): a rejection is always
 * a RunFailure, whichever path the request took.
 */
export class ModelRunner {
  readonly batcher: Batcher | undefined;

  constructor(
    private readonly session: ModelSession,
    /** Names the version in messages: `model "m" version 1`. */
    private readonly label: string,
    batching: BatchingConfig | undefined,
    onBatch?: (requests: number, rows: number) => void,
  ) {
    if (batching && batching.maxBatchSize > 1 && canBatch(session.inputs)) {
      this.batcher = new Batcher((inputs, outputs) => session.run(inputs, outputs), batching, label, onBatch);
    }
  }

  run(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<Timed<HostTensor[]>> {
    // Checked per request, before batching: one bad request must not fail a batch of good ones.
    const mismatch = this.session.sharedDims.length === 0 ? undefined : disagreement(this.session.sharedDims, inputs);
    if (mismatch !== undefined) return Promise.reject(new RunFailure('client-input', `${this.label} rejected the input: ${mismatch}`));
    return this.batcher ? this.batcher.submit(inputs, outputNames) : this.runAlone(inputs, outputNames);
  }

  private async runAlone(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<Timed<HostTensor[]>> {
    const started = performance.now();
    try {
      const value = await this.session.run(inputs, outputNames);
      return { value, queueMs: 0, computeMs: performance.now() - started };
    } catch (err) {
      throw runFailure(err, this.label);
    }
  }

  /** Fails whatever still waits for a batch (on unload or shutdown). */
  close(reason: string): void {
    this.batcher?.close(reason);
  }
}
