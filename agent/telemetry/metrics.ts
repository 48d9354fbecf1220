import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

interface Observer {
  observe(value: number): void;
}

export interface RequestMetrics {
  queue: Observer;
  compute: Observer;
  duration: Observer;
  ok: { inc(): void };
  status(code: number): { inc(): void };
}

/** Prometheus metrics served on GET /metrics. */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'edgefleet_requests_total',
    help: 'Inference requests by model, version, API and HTTP status code',
    labelNames: ['model', 'version', 'api', 'code'] as const,
    registers: [this.registry],
  });
  readonly queueSeconds = new Histogram({
    name: 'edgefleet_request_queue_seconds',
    help: 'Time an inference request waited for its batch to run',
    labelNames: ['model', 'version'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly computeSeconds = new Histogram({
    name: 'edgefleet_request_compute_seconds',
    help: 'ONNX Runtime compute time of the run that served an inference request',
    labelNames: ['model', 'version'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly requestSeconds = new Histogram({
    name: 'edgefleet_request_duration_seconds',
    help: 'Whole inference request time, from the first byte read to the response written',
    labelNames: ['model', 'version', 'api'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly batchRows = new Histogram({
    name: 'edgefleet_batch_rows',
    help: 'Rows in each batch the dynamic batcher ran',
    labelNames: ['model', 'version'] as const,
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({
    name: 'edgefleet_requests_in_flight',
    help: 'HTTP requests being served now',
    registers: [this.registry],
  });
  readonly loadSeconds = new Gauge({
    name: 'edgefleet_model_load_duration_seconds',
    help: 'Time ONNX Runtime took to create the session of a model version',
    labelNames: ['model', 'version', 'provider'] as const,
    registers: [this.registry],
  });
  readonly warmupSeconds = new Gauge({
    name: 'edgefleet_model_warmup_duration_seconds',
    help: 'Time the warm-up runs of a model version took',
    labelNames: ['model', 'version'] as const,
    registers: [this.registry],
  });
  readonly loadFailures = new Counter({
    name: 'edgefleet_model_load_failures_total',
    help: 'Model versions that failed to load, warm up or self-test',
    labelNames: ['model'] as const,
    registers: [this.registry],
  });

  private readonly children = new Map<string, RequestMetrics>();

  /**
   * The per-request series of one model version and API, resolved once:
   * prom-client's label lookup on every observe costs microseconds a
   * sub-millisecond request cannot spare.
   */
  forRequest(model: string, version: number, api: string): RequestMetrics {
    const key = `${model}\u0000${version}\u0000${api}`;
    let c = this.children.get(key);
    if (!c) {
      const v = String(version);
      c = {
        queue: this.queueSeconds.labels(model, v),
        compute: this.computeSeconds.labels(model, v),
        duration: this.requestSeconds.labels(model, v, api),
        ok: this.requests.labels(model, v, api, '200'),
        status: (code) => this.requests.labels(model, v, api, String(code)),
      };
      this.children.set(key, c);
    }
    return c;
  }

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'edgefleet_' });
  }

  forgetVersion(model: string, version: number): void {
    const v = String(version);
    for (const key of this.children.keys()) if (key.startsWith(`${model}\u0000${v}\u0000`)) this.children.delete(key);
    this.loadSeconds.remove({ model, version: v });
    this.warmupSeconds.remove({ model, version: v });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
