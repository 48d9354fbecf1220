import type { BatchingConfig } from '../config/schema.js';
import { RunFailure, runFailure } from './run-failure.js';
import type { HostTensor, TensorData, TensorSpec } from './tensor.js';

export interface Timed<T> {
  value: T;
  /** Milliseconds spent waiting for a batch to be cut and run. */
  queueMs: number;
  /** Milliseconds of the `session.run` that computed it. */
  computeMs: number;
}

type RunFn = (inputs: readonly HostTensor[], outputNames?: readonly string[]) => Promise<HostTensor[]>;

interface Pending {
  inputs: readonly HostTensor[];
  outputNames: readonly string[] | undefined;
  rows: number;
  key: string;
  enqueuedAt: number;
  resolve: (r: Timed<HostTensor[]>) => void;
  reject: (e: unknown) => void;
}

/** A model can be batched when every input has a dynamic first dimension. */
export function canBatch(inputs: readonly TensorSpec[]): boolean {
  return inputs.length > 0 && inputs.every((s) => s.shape.length > 0 && s.shape[0] === -1);
}

/**
 * Dynamic batching: concurrent requests queue, a batch is cut (see schedule),
 * run once, and the outputs are split back. Only requests
 * with the same trailing shapes and outputs share a batch. One batch runs at a
 * time. Every rejection is a RunFailure.
 */
export class Batcher {
  private queue: Pending[] = [];
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  private turnEnd: NodeJS.Immediate | undefined;

  constructor(
    private readonly run: RunFn,
    private readonly config: BatchingConfig,
    private readonly label: string,
    /** Called with the number of requests and rows in each batch run. */
    private readonly onBatch?: (requests: number, rows: number) => void,
  ) {}

  get queued(): number {
    return this.queue.length;
  }

  submit(inputs: readonly HostTensor[], outputNames?: readonly string[]): Promise<Timed<HostTensor[]>> {
    if (this.queue.length >= this.config.maxQueueSize) {
      return Promise.reject(new RunFailure('overload', `${this.label}: the batch queue is full (${this.queue.length} requests waiting); retry later`));
    }
    const rows = inputs[0]?.shape[0] ?? 1;
    const key = batchKey(inputs, outputNames);
    return new Promise((resolve, reject) => {
      this.queue.push({ inputs, outputNames, rows, key, enqueuedAt: performance.now(), resolve, reject });
      this.schedule();
    });
  }

  /**
   * When to cut: at maxBatchSize rows, when the oldest request has waited
   * maxQueueDelayMs, or when the model is idle at the end of the event-loop
   * turn in which requests arrived. onnxruntime-node runs on the event loop,
   * so no request can arrive while a batch computes: waiting out the delay
   * with an idle model would only add latency (a closed-loop client would wait
   * the full delay on every request), while requests parsed in the same turn
   * still share the batch.
   */
  private schedule(): void {
    if (this.running || this.queue.length === 0) return;
    const head = this.queue[0] as Pending;
    const waited = performance.now() - head.enqueuedAt;
    if (this.readyRows(head) >= this.config.maxBatchSize || waited >= this.config.maxQueueDelayMs) {
      this.dispatch(head);
      return;
    }
    this.turnEnd ??= setImmediate(() => {
      this.turnEnd = undefined;
      const first = this.queue[0];
      if (!this.running && first) this.dispatch(first);
    });
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.schedule();
    }, this.config.maxQueueDelayMs - waited);
  }

  private dispatch(head: Pending): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    void this.runBatch(this.cut(head));
  }

  private readyRows(head: Pending): number {
    let rows = 0;
    for (const p of this.queue) if (p.key === head.key) rows += p.rows;
    return rows;
  }

  /** Takes requests matching the head, in arrival order, up to maxBatchSize rows (the head always goes). */
  private cut(head: Pending): Pending[] {
    const batch: Pending[] = [];
    const rest: Pending[] = [];
    let rows = 0;
    // One pass; splicing each taken request out would shift the queue once per request.
    for (const p of this.queue) {
      if (p.key === head.key && (batch.length === 0 || rows + p.rows <= this.config.maxBatchSize)) {
        batch.push(p);
        rows += p.rows;
      } else rest.push(p);
    }
    this.queue = rest;
    return batch;
  }

  private async runBatch(batch: Pending[]): Promise<void> {
    this.running = true;
    const started = performance.now();
    this.onBatch?.(batch.length, batch.reduce((n, p) => n + p.rows, 0));
    try {
      const first = batch[0] as Pending;
      const outputs = batch.length === 1 ? await this.run(first.inputs, first.outputNames) : await this.run(concatInputs(batch), first.outputNames);
      const computeMs = performance.now() - started;
      const parts = batch.length === 1 ? [outputs] : splitOutputs(outputs, batch.map((p) => p.rows));
      batch.forEach((p, i) => p.resolve({ value: parts[i] as HostTensor[], queueMs: started - p.enqueuedAt, computeMs }));
    } catch (err) {
      // One classification for the batch: its requests share the inputs' fit and the model's fault alike.
      const failure = runFailure(err, this.label);
      for (const p of batch) p.reject(failure);
    } finally {
      this.running = false;
      this.schedule();
    }
  }

  /** Fails everything still queued (on unload or shutdown). */
  close(reason: string): void {
    clearTimeout(this.timer);
    if (this.turnEnd) clearImmediate(this.turnEnd);
    for (const p of this.queue.splice(0)) p.reject(new RunFailure('overload', reason));
  }
}

/**
 * Requests share a batch when their inputs agree in everything but the first
 * dimension and they ask for the same outputs:
 * `name:d1xd2,...|out1,out2` (or `|*` for all outputs).
 */
function batchKey(inputs: readonly HostTensor[], outputNames: readonly string[] | undefined): string {
  let key = '';
  for (let k = 0; k < inputs.length; k++) {
    const t = inputs[k] as HostTensor;
    if (k > 0) key += ',';
    key += `${t.name}:`;
    for (let d = 1; d < t.shape.length; d++) key += d > 1 ? `x${t.shape[d]}` : `${t.shape[d]}`;
  }
  return `${key}|${outputNames?.join(',') ?? '*'}`;
}

function concatInputs(batch: readonly Pending[]): HostTensor[] {
  const first = (batch[0] as Pending).inputs;
  return first.map((t, k) => {
    const parts = batch.map((p) => (p.inputs[k] as HostTensor).data);
    const rows = batch.reduce((n, p) => n + p.rows, 0);
    return { name: t.name, datatype: t.datatype, shape: [rows, ...t.shape.slice(1)], data: concatData(parts) };
  });
}

function concatData(parts: readonly TensorData[]): TensorData {
  const first = parts[0] as TensorData;
  if (Array.isArray(first)) return (parts as string[][]).flat();
  const total = parts.reduce((n, p) => n + p.length, 0);
  const Ctor = first.constructor as new (n: number) => Exclude<TensorData, string[]>;
  const out = new Ctor(total);
  let offset = 0;
  for (const p of parts as Exclude<TensorData, string[]>[]) {
    (out as Float32Array).set(p as Float32Array, offset);
    offset += p.length;
  }
  return out;
}

/** Splits each output along its first dimension back into per-request pieces. */
function splitOutputs(outputs: readonly HostTensor[], rows: readonly number[]): HostTensor[][] {
  const total = rows.reduce((a, b) => a + b, 0);
  const parts: HostTensor[][] = rows.map(() => []);
  for (const out of outputs) {
    if (out.shape[0] !== total) throw new Error(`output "${out.name}" has first dimension ${out.shape[0]}, not the batch size ${total}; disable batching for this model`);
    const perRow = out.data.length / total;
    let row = 0;
    rows.forEach((n, i) => {
      const data = Array.isArray(out.data) ? out.data.slice(row * perRow, (row + n) * perRow) : out.data.subarray(row * perRow, (row + n) * perRow);
      (parts[i] as HostTensor[]).push({ name: out.name, datatype: out.datatype, shape: [n, ...out.shape.slice(1)], data });
      row += n;
    });
  }
  return parts;
}
