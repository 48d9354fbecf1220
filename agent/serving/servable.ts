import type { Timed } from '../runtime/batcher.js';
import { ModelRunner } from '../runtime/runner.js';
import type { ModelSession } from '../runtime/session.js';
import type { HostTensor } from '../runtime/tensor.js';
import type { BatchingConfig } from '../config/schema.js';
import { failureKind } from '../errors.js';

/**
 * One loaded model version: its session, its runner (batching or not) and a
 * count of the requests that hold it. A retired version is released only
 * after that count drains to zero, so a hot swap never cuts a request off.
 */
export class Servable {
  private inFlight = 0;
  /**
   * What the rollout's health window reads: runs the model answered or
   * faulted on since load, and its faults. Inputs it rejected and requests
   * turned away under load say nothing about the version, so neither counts.
   */
  runs = 0;
  modelFaults = 0;
  private retired = false;
  private drainedResolve: (() => void) | undefined;
  readonly runner: ModelRunner;

  constructor(
    readonly name: string,
    readonly version: number,
    readonly session: ModelSession,
    batching: BatchingConfig | undefined,
    onBatch?: (requests: number, rows: number) => void,
  ) {
    this.runner = new ModelRunner(session, `model "${name}" version ${version}`, batching, onBatch);
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Runs one request; the caller must have acquired the servable. Rejects with the runtime's RunFailure. */
  infer(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<Timed<HostTensor[]>> {
    // A promise chain, not an async function: one promise fewer on every request.
    return this.runner.run(inputs, outputNames).then(this.countAnswer, this.countFailure);
  }

  private readonly countAnswer = (result: Timed<HostTensor[]>): Timed<HostTensor[]> => {
    this.runs++;
    return result;
  };

  private readonly countFailure = (err: unknown): never => {
    if (failureKind(err) === 'model-fault') {
      this.runs++;
      this.modelFaults++;
    }
    throw err;
  };

  acquire(): void {
    this.inFlight++;
  }

  release(): void {
    this.inFlight--;
    if (this.retired && this.inFlight === 0) this.drainedResolve?.();
  }

  /** Waits for requests in flight to finish, then frees the session. */
  async retire(): Promise<void> {
    if (this.retired) return;
    this.retired = true;
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.drainedResolve = resolve));
    this.runner.close(`model "${this.name}" version ${this.version} was unloaded`);
    await this.session.release();
  }
}
