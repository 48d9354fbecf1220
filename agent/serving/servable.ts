import { Batcher, canBatch, type Timed } from '../runtime/batcher.js';
import type { ModelSession } from '../runtime/session.js';
import type { HostTensor } from '../runtime/tensor.js';
import type { BatchingConfig } from '../config/schema.js';
import { EdgefleetError } from '../errors.js';

/**
 * One loaded model version: its session, optional batcher and a count of the
 * requests that hold it. A retired version is released only after that count
 * drains to zero, so a hot swap never cuts a request off.
 */
export class Servable {
  private inFlight = 0;
  /** Runs and failed runs since load: the rollout's health window reads these. */
  runs = 0;
  runFailures = 0;
  private retired = false;
  private drainedResolve: (() => void) | undefined;
  readonly batcher: Batcher | undefined;

  constructor(
    readonly name: string,
    readonly version: number,
    readonly session: ModelSession,
    batching: BatchingConfig | undefined,
    onBatch?: (requests: number, rows: number) => void,
  ) {
    if (batching && batching.maxBatchSize > 1 && canBatch(session.inputs)) {
      this.batcher = new Batcher((inputs, outputs) => session.run(inputs, outputs), batching, `model "${name}" version ${version}`, onBatch);
    }
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Runs one request; the caller must have acquired the servable. */
  infer(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<Timed<HostTensor[]>> {
    this.runs++;
    // A promise chain, not an async function: one promise fewer on every request.
    return (this.batcher ? this.batcher.submit(inputs, outputNames) : this.runAlone(inputs, outputNames)).catch(this.countFailure);
  }

  private async runAlone(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<Timed<HostTensor[]>> {
    const started = performance.now();
    const value = await this.session.run(inputs, outputNames);
    return { value, queueMs: 0, computeMs: performance.now() - started };
  }

  /** Overload (a full batch queue) is not the model's fault; ONNX Runtime failures are. */
  private readonly countFailure = (err: unknown): never => {
    if (!(err instanceof EdgefleetError)) this.runFailures++;
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
    this.batcher?.close(`model "${this.name}" version ${this.version} was unloaded`);
    await this.session.release();
  }
}
