import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Metric } from 'prom-client';

const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

type Labels = Record<string, string>;

/** A value as prom-client's metrics hand it to the Registry (its typings leave out sharedLabels and exemplar). */
interface ExportedValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
  sharedLabels?: Labels;
  exemplar?: null;
}

interface Exported {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: ExportedValue[];
  aggregator: 'sum';
}

interface FastMetricConfig {
  name: string;
  help: string;
  labelNames: readonly string[];
  registry: Registry;
}

/**
 * The per-request metrics, written for the hot path: a series is resolved once
 * (`labels()`), after which observe/inc touch a few numbers and allocate
 * nothing. prom-client's own children hash the label set, validate it and
 * allocate on every call (about 0.7 µs an observe). These classes keep the
 * series the same way prom-client does (insertion order, per-bucket counts,
 * the running sum) and hand the Registry the same values from `get()`, so
 * /metrics reads exactly as it would with prom-client's Histogram and Counter.
 */
abstract class FastMetric<S extends { labels: Labels; attached: boolean }> {
  readonly name: string;
  readonly help: string;
  abstract readonly type: Exported['type'];
  readonly aggregator = 'sum' as const;
  readonly labelNames: readonly string[];
  /** Series in creation order, keyed by their label values. */
  protected series = new Map<string, S>();

  constructor(config: FastMetricConfig) {
    this.name = config.name;
    this.help = config.help;
    this.labelNames = config.labelNames;
    config.registry.registerMetric(this as unknown as Metric);
  }

  protected abstract create(labels: Labels): S;

  protected labelsOf(values: readonly string[]): Labels {
    if (values.length !== this.labelNames.length) {
      throw new Error(`Invalid number of arguments (${values.length}): "${values.join(', ')}" for label names (${this.labelNames.length}): "${this.labelNames.join(', ')}".`);
    }
    const labels: Labels = {};
    this.labelNames.forEach((n, i) => (labels[n] = values[i] as string));
    return labels;
  }

  protected keyOf(labels: Labels): string {
    for (const k in labels) {
      if (!this.labelNames.includes(k)) throw new Error(`Added label "${k}" is not included in initial labelset: ${JSON.stringify(this.labelNames)}`);
    }
    return this.labelNames.map((n) => labels[n] ?? '').join('\u0000');
  }

  /** The series for a label set, created (and exported) on first use, as prom-client does. */
  protected seriesOf(labels: Labels): S {
    const key = this.keyOf(labels);
    let s = this.series.get(key);
    if (!s) {
      s = this.create(labels);
      this.series.set(key, s);
    }
    return s;
  }

  /** Drops every series; children resolve theirs again (a new one, exported last) on their next update, as with prom-client. */
  reset(): void {
    for (const s of this.series.values()) s.attached = false;
    this.series = new Map();
  }

  abstract get(): Promise<Exported>;
}

class HistogramSeries {
  /** Per-bucket (not cumulative) counts, one per upper bound; values above the last bound count only in `count`. */
  readonly buckets: Float64Array;
  sum = 0;
  count = 0;
  attached = true;
  constructor(readonly labels: Labels, bounds: number) {
    this.buckets = new Float64Array(bounds);
  }
}

export interface FastObserver {
  observe(value: number): void;
}

/** A Prometheus histogram (prom-client's exposition and semantics) with allocation-free children. */
export class FastHistogram extends FastMetric<HistogramSeries> {
  readonly type = 'histogram' as const;
  readonly upperBounds: readonly number[];

  constructor(config: FastMetricConfig & { buckets: readonly number[] }) {
    super(config);
    this.upperBounds = [...config.buckets];
  }

  protected create(labels: Labels): HistogramSeries {
    return new HistogramSeries(labels, this.upperBounds.length);
  }

  /** The child of one label set, given as values in `labelNames` order. */
  labels(...values: string[]): FastObserver {
    const labels = this.labelsOf(values);
    let s: HistogramSeries | undefined;
    return {
      observe: (value: number): void => {
        // Created on the first observation, as prom-client does; again after a reset.
        if (s === undefined || !s.attached) s = this.seriesOf(labels);
        this.record(s, value);
      },
    };
  }

  observe(labels: Labels, value: number): void {
    this.record(this.seriesOf(labels), value);
  }

  private record(s: HistogramSeries, value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${String(value)}`);
    const bounds = this.upperBounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        s.buckets[i] = (s.buckets[i] as number) + 1;
        break;
      }
    }
    s.sum += value;
    s.count += 1;
  }

  /** What prom-client's Histogram hands the Registry for the text format. */
  async getForPromString(): Promise<Exported> {
    const bucketName = `${this.name}_bucket`;
    const values: ExportedValue[] = [];
    for (const s of this.series.values()) {
      let acc = 0;
      this.upperBounds.forEach((le, i) => {
        acc += s.buckets[i] as number;
        values.push({ labels: { le }, sharedLabels: s.labels, value: acc, metricName: bucketName, exemplar: null });
      });
      values.push(
        { labels: { le: '+Inf' }, sharedLabels: s.labels, value: s.count, metricName: bucketName, exemplar: null },
        { labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${this.name}_sum`, exemplar: undefined },
        { labels: {}, sharedLabels: s.labels, value: s.count, metricName: `${this.name}_count`, exemplar: undefined },
      );
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** prom-client's JSON form: the series labels folded into each value's labels. */
  async get(): Promise<Exported> {
    const data = await this.getForPromString();
    data.values = data.values.map(({ sharedLabels, labels, ...rest }) => ({ ...rest, labels: { ...labels, ...sharedLabels } }));
    return data;
  }
}

class CounterSeries {
  value = 0;
  attached = true;
  constructor(readonly labels: Labels) {}
}

export interface FastIncrement {
  inc(): void;
}

/** A Prometheus counter (prom-client's exposition and semantics) with allocation-free children. */
export class FastCounter extends FastMetric<CounterSeries> {
  readonly type = 'counter' as const;

  protected create(labels: Labels): CounterSeries {
    return new CounterSeries(labels);
  }

  /** The child of one label set, given as values in `labelNames` order. */
  labels(...values: string[]): FastIncrement {
    const labels = this.labelsOf(values);
    let s: CounterSeries | undefined;
    return {
      inc: (): void => {
        if (s === undefined || !s.attached) s = this.seriesOf(labels);
        s.value += 1;
      },
    };
  }

  inc(labels: Labels, value = 1): void {
    if (value && !Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${String(value)}`);
    if (value < 0) throw new Error('It is not possible to decrease a counter');
    this.seriesOf({ ...labels }).value += value;
  }

  async get(): Promise<Exported> {
    const values = [...this.series.values()].map((s) => ({ value: s.value, labels: s.labels }));
    return { help: this.help, name: this.name, type: this.type, values, aggregator: this.aggregator };
  }
}

export interface RequestMetrics {
  queue: FastObserver;
  compute: FastObserver;
  duration: FastObserver;
  ok: FastIncrement;
  status(code: number): FastIncrement;
}

/** The prefix of every metric the agent serves. */
const PREFIX = 'edgefleet_';

/**
 * prom-client's default gauges whose names end in `_total`, a suffix Prometheus
 * keeps for counters (`promtool check metrics` refuses them), and the names the
 * agent serves them under. Each is the sum of the gauge of the same name
 * without `_total`, which counts by type.
 */
export const RENAMED_PROCESS_GAUGES: Readonly<Record<string, string>> = {
  [`${PREFIX}nodejs_active_handles_total`]: `${PREFIX}nodejs_active_handles_all`,
  [`${PREFIX}nodejs_active_requests_total`]: `${PREFIX}nodejs_active_requests_all`,
  [`${PREFIX}nodejs_active_resources_total`]: `${PREFIX}nodejs_active_resources_all`,
};

/**
 * The `model` label of requests refused before they reached a model the agent
 * knows. Model names in request paths are the client's to choose: as label
 * values, a scan of random names would grow the series without bound.
 */
export const UNKNOWN_MODEL = '_unknown';

export interface MetricsOptions {
  /** The standard process and Node.js metrics (default true). */
  processMetrics?: boolean;
  /**
   * Whether a model name may be a label value: a model the agent serves or has
   * tried to load. Absent: none may, and every refused request counts under UNKNOWN_MODEL.
   */
  knownModel?: (name: string) => boolean;
}

/** Prometheus metrics served on GET /metrics. */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new FastCounter({
    name: 'edgefleet_requests_total',
    help: 'Inference requests by model, version, API and HTTP status code',
    labelNames: ['model', 'version', 'api', 'code'],
    registry: this.registry,
  });
  readonly queueSeconds = new FastHistogram({
    name: 'edgefleet_request_queue_seconds',
    help: 'Time an inference request waited for its batch to run',
    labelNames: ['model', 'version'],
    buckets: LATENCY_BUCKETS,
    registry: this.registry,
  });
  readonly computeSeconds = new FastHistogram({
    name: 'edgefleet_request_compute_seconds',
    help: 'ONNX Runtime compute time of the run that served an inference request',
    labelNames: ['model', 'version'],
    buckets: LATENCY_BUCKETS,
    registry: this.registry,
  });
  readonly requestSeconds = new FastHistogram({
    name: 'edgefleet_request_duration_seconds',
    help: 'Whole inference request time, from the first byte read to the response written',
    labelNames: ['model', 'version', 'api'],
    buckets: LATENCY_BUCKETS,
    registry: this.registry,
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
   * The per-request series of one model version and API, resolved once, so a
   * request pays no label lookup (see FastMetric).
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

  private readonly knownModel: (name: string) => boolean;

  constructor(options: MetricsOptions = {}) {
    this.knownModel = options.knownModel ?? (() => false);
    if (options.processMetrics !== false) {
      collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
      this.renameProcessGauges();
    }
  }

  /** Serves RENAMED_PROCESS_GAUGES under their new names; prom-client has no option for it. */
  private renameProcessGauges(): void {
    for (const [old, name] of Object.entries(RENAMED_PROCESS_GAUGES)) {
      const gauge = this.registry.getSingleMetric(old) as (Metric & { name: string; help: string }) | undefined;
      if (!gauge) continue; // Node.js versions without the call behind it have none
      this.registry.removeSingleMetric(old);
      gauge.name = name;
      const byType = old.slice(0, -'_total'.length);
      gauge.help = `${gauge.help.replace(/\.$/, '')}: the sum of ${byType} over its types (formerly ${old}).`;
      this.registry.registerMetric(gauge);
    }
  }

  /**
   * Counts an inference request answered before it reached a model version: an
   * unknown model or version, a malformed path or ModelSpec, overload. The
   * model label is the name only for a model the agent knows (UNKNOWN_MODEL otherwise).
   */
  refused(model: string, api: string, code: number): void {
    this.requests.inc({ model: this.knownModel(model) ? model : UNKNOWN_MODEL, version: '', api, code: String(code) });
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
