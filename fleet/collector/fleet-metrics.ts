/**
 * The fleet as Prometheus metrics (text exposition format 0.0.4): what the
 * collector's store knows of each device and model version, the staged
 * rollouts, and the collector's own ingest figures. Pure: rows in, text out;
 * http-server.ts serves it on GET /metrics. docs/monitoring.md lists every
 * metric, and provisioning/prometheus/ holds the alert rules that read them.
 *
 * Cardinality is bounded per device: one series per model slot the store
 * keeps (at most the collector's --max-models), at most MAX_GPUS GPUs and
 * MAX_GROUPS groups, four desired statuses. Label values come from the
 * protocol's names (section 1) except the agent's version and arch, which a
 * device may set to any text: those are cut to MAX_INFO_CHARS, and every
 * label value is escaped, so no device can break the page or add a line.
 */
import { DESIRED_STATUSES } from '../../protocol/index.js';
import { currentRollouts, rolloutHalted, type Rollout } from '../rollout/planner.js';
import type { CollectorStats } from './collector.js';
import { DEFAULT_QUOTAS } from './ingest-guard.js';
import { millis, type FleetRow, type FleetStore } from './store.js';

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** GPUs per device and groups per device that get series; a device listing more is cut (docs/monitoring.md). */
export const MAX_GPUS = 16;
export const MAX_GROUPS = 16;
/** Longest agent version or arch text in a label. */
export const MAX_INFO_CHARS = 64;

export interface FleetMetricsInput {
  /** Every device's row (store.fleetStatus()). */
  rows: readonly FleetRow[];
  /** Rollouts, newest first (store.rollouts.list()). */
  rollouts: readonly Rollout[];
  /** This collector's own figures; absent on a listener without an MQTT side. */
  collector?: CollectorStats;
  /** Model slots per device that get series (the collector's --max-models). */
  maxModels?: number;
  /** Epoch ms: ages are measured from it. */
  now: number;
}

type Labels = Readonly<Record<string, string>>;
type MetricType = 'gauge' | 'counter';

/**
 * Writes families one after the other, each sample under its family's HELP
 * and TYPE, as the exposition format requires: a family's samples must not
 * be split.
 */
export class MetricsText {
  private readonly families = new Map<string, { help: string; type: MetricType; body: string }>();

  family(name: string, type: MetricType, help: string): (labels: Labels, value: number) => void {
    if (!METRIC_NAME_RE.test(name)) throw new Error(`"${name}" is not a Prometheus metric name`);
    // One string per family, appended to: V8 keeps it as a rope, far less garbage than an array of lines joined.
    const family = { help, type, body: '' };
    if (this.families.has(name)) throw new Error(`metric family ${name} declared twice`);
    this.families.set(name, family);
    return (labels, value) => {
      family.body += `${name}${labelText(labels)} ${formatValue(value)}\n`;
    };
  }

  toString(): string {
    let out = '';
    for (const [name, f] of this.families) {
      if (f.body === '') continue;
      out += `# HELP ${name} ${escapeHelp(f.help)}\n# TYPE ${name} ${f.type}\n${f.body}`;
    }
    return out;
  }
}

const METRIC_NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as the exposition format writes it: backslash, double quote and line feed escaped. */
export function escapeLabelValue(value: string): string {
  return NEEDS_ESCAPE.test(value) ? value.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`)) : value;
}

const NEEDS_ESCAPE = /[\\"\n]/;
/** Label names already checked: a page of 10,000 devices writes the same few names hundreds of thousands of times. */
const checkedLabels = new Set<string>();

function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => (c === '\n' ? '\\n' : '\\\\'));
}

/**
 * Label sets written under several families (a device's own, a model's) are
 * escaped once, keyed by the object: the writers build each set once and never change it.
 */
const labelTexts = new WeakMap<Labels, string>();

function labelText(labels: Labels): string {
  const known = labelTexts.get(labels);
  if (known !== undefined) return known;
  const text = labelTextOf(labels);
  labelTexts.set(labels, text);
  return text;
}

function labelTextOf(labels: Labels): string {
  const parts: string[] = [];
  for (const [name, value] of Object.entries(labels)) {
    if (!checkedLabels.has(name)) {
      if (!LABEL_NAME_RE.test(name) || name.startsWith('__')) throw new Error(`"${name}" is not a Prometheus label name`);
      checkedLabels.add(name);
    }
    parts.push(`${name}="${escapeLabelValue(value)}"`);
  }
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** The whole page. */
export function renderFleetMetrics(input: FleetMetricsInput): string {
  const text = new MetricsText();
  writeDevices(text, input);
  writeModels(text, input);
  writeRollouts(text, input.rollouts);
  if (input.collector !== undefined) writeCollector(text, input.collector, input.rows.length);
  return text.toString();
}

function writeDevices(text: MetricsText, { rows, now }: FleetMetricsInput): void {
  const g = (name: string, help: string) => text.family(`edgefleet_device_${name}`, 'gauge', help);
  const c = (name: string, help: string) => text.family(`edgefleet_device_${name}`, 'counter', help);
  const online = g('online', '1 when the device\'s retained status says online, 0 when offline; absent before any status');
  const lastSeen = g('last_seen_age_seconds', 'Seconds since anything (status, state, telemetry) was last received from the device, by the collector\'s clock');
  const group = g('group', 'Always 1: the device reports being in the group (join on device to scope a rule by group)');
  const agent = g('agent_info', 'Always 1: the agent version and architecture the device reports');
  const desired = g('desired_status', '1 for the status of the device\'s latest desired document (applying, applied, failed, rejected), 0 for the others; absent before a document');
  const cpu = g('cpu_usage_ratio', 'CPU use of the latest health point, 0 to 1 (1 = every core busy)');
  const load = g('load1', 'One-minute load average of the latest health point');
  const memUsed = g('memory_used_bytes', 'Memory in use, from the latest health point');
  const memTotal = g('memory_total_bytes', 'Memory installed, from the latest health point');
  const temp = g('temperature_celsius', 'Board temperature of the latest health point; absent on boards without a sensor');
  const gpuUtil = g('gpu_utilization_ratio', 'GPU utilisation of the latest health point, 0 to 1, by GPU index');
  const gpuUsed = g('gpu_memory_used_bytes', 'GPU memory in use of the latest health point, by GPU index');
  const gpuTotal = g('gpu_memory_total_bytes', 'GPU memory of the latest health point, by GPU index');
  const gpuTemp = g('gpu_temperature_celsius', 'GPU temperature of the latest health point, by GPU index');
  const outboxRows = g('outbox_rows', 'Telemetry points waiting in the device\'s buffer (latest health point, protocol section 13)');
  const outboxBytes = g('outbox_bytes', 'Bytes of telemetry waiting in the device\'s buffer (latest health point, protocol section 13)');
  const dropped = c('dropped_points_total', 'Telemetry points the device reported it had to drop (protocol section 13 \'dropped\' points)');
  const droppedAt = g('last_dropped_timestamp_seconds', 'When the collector received the device\'s latest \'dropped\' point (Unix time)');
  const quarantined = c('quarantined_messages_total', 'Messages from the device acknowledged without storing: not valid, or refused by the database');
  const overQuota = c('over_quota_total', 'Messages and points from the device dropped for its quotas');
  const skewed = c('clock_skewed_total', 'Points, events and states from the device stored with the arrival time: the device\'s clock was too far off');
  for (const row of rows) {
    const device = { device: row.device };
    if (row.online !== null) online(device, row.online ? 1 : 0);
    if (row.lastSeen !== null) lastSeen(device, Math.max(0, (now - millis(row.lastSeen)) / 1000));
    for (const name of row.groups.slice(0, MAX_GROUPS)) group({ device: row.device, group: name }, 1);
    if (row.agent !== null) agent({ device: row.device, version: row.agent.version.slice(0, MAX_INFO_CHARS), arch: row.agent.arch.slice(0, MAX_INFO_CHARS) }, 1);
    if (row.desired !== null) for (const status of DESIRED_STATUSES) desired({ device: row.device, status }, row.desired.status === status ? 1 : 0);
    const h = row.health;
    if (h !== null) {
      cpu(device, h.cpuPct / 100);
      load(device, h.load1);
      memUsed(device, h.memUsedBytes);
      memTotal(device, h.memTotalBytes);
      if (h.tempC !== null) temp(device, h.tempC);
      h.gpus.slice(0, MAX_GPUS).forEach((gpu, i) => {
        const labels = { device: row.device, gpu: String(i) };
        if (gpu.utilPct !== null) gpuUtil(labels, gpu.utilPct / 100);
        if (gpu.memUsedBytes !== null) gpuUsed(labels, gpu.memUsedBytes);
        if (gpu.memTotalBytes !== null) gpuTotal(labels, gpu.memTotalBytes);
        if (gpu.tempC !== null) gpuTemp(labels, gpu.tempC);
      });
    }
    if (row.outbox !== null) {
      outboxRows(device, row.outbox.rows);
      outboxBytes(device, row.outbox.bytes);
    }
    dropped(device, row.dropped.count);
    if (row.dropped.lastAt !== null) droppedAt(device, millis(row.dropped.lastAt) / 1000);
    quarantined(device, row.quarantined);
    overQuota(device, row.overQuota);
    skewed(device, row.clockSkewed);
  }
}

/** One series set per device and model: the last inference interval the device reported for it, under the version it was for. */
function writeModels(text: MetricsText, { rows, maxModels = DEFAULT_QUOTAS.maxModels, now }: FleetMetricsInput): void {
  const g = (name: string, help: string) => text.family(`edgefleet_model_${name}`, 'gauge', help);
  const requests = g('requests', 'Requests in the device\'s last inference interval for the model version');
  const errors = g('errors', 'Failed requests (server errors) in the device\'s last inference interval for the model version');
  const interval = g('interval_seconds', 'Length of that interval');
  const age = g('interval_age_seconds', 'Seconds since that interval ended, by the device\'s clock (the agent sends no point for an interval without requests)');
  const p50 = g('latency_p50_seconds', 'Median latency of that interval; absent when it had no requests');
  const p99 = g('latency_p99_seconds', '99th percentile latency of that interval; absent when it had no requests');
  for (const row of rows) {
    for (const i of row.inference.slice(0, maxModels)) {
      const labels = { device: row.device, model: i.model, version: String(i.version) };
      requests(labels, i.count);
      errors(labels, i.errors);
      interval(labels, i.intervalS);
      age(labels, Math.max(0, (now - millis(i.ts)) / 1000));
      if (i.p50 !== null) p50(labels, i.p50 / 1000);
      if (i.p99 !== null) p99(labels, i.p99 / 1000);
    }
  }
}

function writeRollouts(text: MetricsText, rollouts: readonly Rollout[]): void {
  const halted = text.family('edgefleet_rollout_halted', 'gauge', '1 when the staged rollout stopped on a gate (paused by the controller, or failed), else 0; per model it rolls out');
  const active = text.family('edgefleet_rollout_active', 'gauge', '1 while the staged rollout is running or paused, else 0');
  const wave = text.family('edgefleet_rollout_wave', 'gauge', 'The rollout\'s current wave, from 1');
  for (const r of currentRollouts(rollouts)) {
    const stopped = rolloutHalted(r) ? 1 : 0;
    for (const m of r.spec.models) halted({ rollout: r.id, model: m.name }, stopped);
    active({ rollout: r.id }, r.status === 'running' || r.status === 'paused' ? 1 : 0);
    wave({ rollout: r.id }, Math.min(r.wave, r.waves.length - 1) + 1);
  }
}

function writeCollector(text: MetricsText, s: CollectorStats, devices: number): void {
  const c = (name: string, help: string, value: number): void => text.family(`edgefleet_collector_${name}`, 'counter', help)({}, value);
  const received = text.family('edgefleet_collector_messages_total', 'counter', 'Device messages this collector received, by channel (telemetry, events, status, state), stored or not');
  for (const [channel, n] of Object.entries(s.received)) received({ channel }, n);
  c('batches_stored_total', 'Telemetry batches this collector stored', s.batches);
  c('points_stored_total', 'Telemetry points this collector stored (new ones; duplicates not counted)', s.points);
  c('points_duplicate_total', 'Telemetry points received again that were stored already', s.duplicates);
  c('events_stored_total', 'Device events this collector stored', s.events);
  c('messages_rejected_total', 'Messages not valid per the protocol (also counted in quarantined)', s.rejected);
  c('messages_quarantined_total', 'Messages acknowledged without storing: not valid, or refused by the database', s.quarantined);
  c('over_quota_total', 'Messages and points dropped for a device\'s quotas', s.overQuota);
  c('clock_skewed_total', 'Device times replaced with the arrival time', s.clockSkewed);
  c('acks_published_total', 'Telemetry acknowledgements published (protocol section 12)', s.acks);
  const g = (name: string, help: string) => text.family(`edgefleet_collector_${name}`, 'gauge', help);
  g('devices', 'Devices in the store')({}, devices);
  if (s.ingestLagMs !== null) {
    g('ingest_lag_seconds', 'For the latest telemetry batch stored: from its newest point\'s time (the device\'s clock, clamped to arrival) to its commit')({}, s.ingestLagMs / 1000);
  }
}

/** Rollouts read per scrape, newest first: enough for every group's newest and every active one. */
export const ROLLOUTS_READ = 1000;

/** What GET /metrics serves: the store read once per scrape (the whole fleet table), rendered. */
export function fleetMetricsSource(store: FleetStore, options: { collector?: CollectorStats; maxModels?: number } = {}): () => Promise<string> {
  return async () => {
    const [rows, rollouts] = await Promise.all([store.fleetStatus(), store.rollouts.list({ limit: ROLLOUTS_READ })]);
    return renderFleetMetrics({ rows, rollouts, ...options, now: Date.now() });
  };
}
