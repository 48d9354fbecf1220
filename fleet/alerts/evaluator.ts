/**
 * The alert evaluator: a pure function from the rules, what the store
 * holds (fleet rows, rollouts), the alerts already pending or firing and
 * the time, to the alerts that change and the notifications to send. No
 * I/O and no clock of its own, so each rule is tested on rows made up in
 * the test, with the time it says.
 *
 * An alert is one rule on one thing (a device, a device's model version or
 * GPU, a rollout's model), named by a fingerprint of the rule and its
 * labels. Its condition true makes it pending; true for the rule's `for`
 * makes it firing (one notification); false again resolves it (one more).
 * A pending alert whose condition clears is forgotten without a word. An
 * alert whose device, model or rule is gone resolves as if it had cleared.
 * Only changes come out, so a quiet fleet of 10,000 devices writes nothing.
 */
import { createHash } from 'node:crypto';
import { formatTime, parseTime } from '../../protocol/index.js';
import type { FleetRow } from '../collector/store.js';
import { currentRollouts, rolloutHalted, type Rollout } from '../rollout/planner.js';
import type { AlertName, AlertRule } from './rules.js';

export type AlertPhase = 'pending' | 'firing' | 'resolved';

export interface AlertAnnotations {
  summary: string;
  description: string;
}

export interface AlertState {
  /** 16 hex digits from the rule and the labels; the alert's key in the store. */
  fingerprint: string;
  /** The rule's id (rules.ts): alert name and scope. */
  rule: string;
  /** alertname, severity, and the alert's own (device, model, version, gpu, rollout). */
  labels: Record<string, string>;
  /** As they read when the alert last changed phase. */
  annotations: AlertAnnotations;
  state: AlertPhase;
  /** When its condition became true (epoch ms); for DeviceOffline, when the device was last heard from. */
  activeSince: number;
  firedAt: number | null;
  resolvedAt: number | null;
  /** The figure compared with the threshold when it last changed phase (null for alerts without one). */
  value: number | null;
}

/** One alert's change of phase, as a webhook tells it. */
export interface AlertNotification {
  fingerprint: string;
  status: 'firing' | 'resolved';
  labels: Record<string, string>;
  annotations: AlertAnnotations;
  /** Epoch ms. */
  startsAt: number;
  /** Epoch ms; null while firing. */
  endsAt: number | null;
}

export interface AlertInput {
  now: number;
  rows: readonly FleetRow[];
  /** Newest first, as rollout-records.ts lists them. */
  rollouts: readonly Rollout[];
}

export interface Evaluation {
  /** Alerts that became pending, firing or resolved. */
  changed: AlertState[];
  /** Pending alerts whose condition cleared before `for`: dropped from the store. */
  dropped: string[];
  notifications: AlertNotification[];
}

/** Something a rule's condition holds for: its labels, the figure, what to say. */
interface Hit {
  labels: Record<string, string>;
  value: number | null;
  annotations: AlertAnnotations;
  /** When the condition began, when the data says (DeviceOffline: last heard from). */
  since?: number;
}

export function fingerprintOf(rule: string, labels: Readonly<Record<string, string>>): string {
  const sorted = Object.keys(labels).sort().map((k) => [k, labels[k]]);
  return createHash('sha256').update(JSON.stringify([rule, sorted])).digest('hex').slice(0, 16);
}

/** `prior`: the alerts pending or firing, by fingerprint (resolved ones are not needed). */
export function evaluate(rules: readonly AlertRule[], input: AlertInput, prior: ReadonlyMap<string, AlertState>): Evaluation {
  const { now } = input;
  const out: Evaluation = { changed: [], dropped: [], notifications: [] };
  const seen = new Set<string>();
  for (const rule of rules) {
    for (const hit of hitsOf(rule, input)) {
      const labels = { alertname: rule.alert, severity: rule.severity, ...hit.labels };
      const fingerprint = fingerprintOf(rule.id, labels);
      // The same alert twice in one pass (a rollout listing a model twice) is one alert.
      if (seen.has(fingerprint)) continue;
      seen.add(fingerprint);
      const before = prior.get(fingerprint);
      if (before?.state === 'firing') continue;
      const activeSince = before?.activeSince ?? Math.min(hit.since ?? now, now);
      const base = { fingerprint, rule: rule.id, labels, annotations: hit.annotations, activeSince, resolvedAt: null, value: hit.value };
      if (now - activeSince >= rule.forMs) {
        out.changed.push({ ...base, state: 'firing', firedAt: now });
        out.notifications.push({ fingerprint, status: 'firing', labels, annotations: hit.annotations, startsAt: now, endsAt: null });
      } else if (before === undefined) {
        out.changed.push({ ...base, state: 'pending', firedAt: null });
      }
    }
  }
  for (const [fingerprint, before] of prior) {
    if (seen.has(fingerprint)) continue;
    if (before.state === 'pending') {
      out.dropped.push(fingerprint);
    } else if (before.state === 'firing') {
      out.changed.push({ ...before, state: 'resolved', resolvedAt: now });
      out.notifications.push({
        fingerprint, status: 'resolved', labels: before.labels, annotations: before.annotations, startsAt: before.firedAt ?? before.activeSince, endsAt: now,
      });
    }
  }
  return out;
}

const inGroup = (row: FleetRow, group: string | null): boolean => group === null || row.groups.includes(group);
const hasModel = (row: FleetRow, model: string | null): boolean =>
  model === null || row.models.some((m) => m.name === model) || row.inference.some((i) => i.model === model);
const fixed = (n: number, digits: number): string => (Number.isInteger(n) ? String(n) : n.toFixed(digits));

function hitsOf(rule: AlertRule, input: AlertInput): Hit[] {
  const alert: AlertName = rule.alert;
  if (alert === 'EdgefleetRolloutHalted') return rolloutHits(rule, input.rollouts);
  const hits: Hit[] = [];
  for (const row of input.rows) {
    if (!inGroup(row, rule.group) || !hasModel(row, rule.model)) continue;
    switch (alert) {
      case 'EdgefleetErrorRateHigh':
      case 'EdgefleetLatencyP99High':
        hits.push(...inferenceHits(rule, row));
        break;
      case 'EdgefleetGpuBusy':
        hits.push(...gpuHits(rule, row));
        break;
      case 'EdgefleetDeviceOffline':
        hits.push(...offlineHits(rule, row, input.now));
        break;
      case 'EdgefleetTemperatureHigh':
        hits.push(...temperatureHits(rule, row));
        break;
      case 'EdgefleetTelemetryDropped':
        hits.push(...droppedHits(rule, row, input.now));
        break;
      case 'EdgefleetDesiredFailed':
        hits.push(...desiredHits(row));
        break;
    }
  }
  return hits;
}

/** ErrorRate and LatencyP99 on each model's last interval; an interval without requests says nothing. */
function inferenceHits(rule: AlertRule, row: FleetRow): Hit[] {
  const threshold = rule.threshold ?? 0;
  const hits: Hit[] = [];
  for (const i of row.inference) {
    if (rule.model !== null && i.model !== rule.model) continue;
    if (i.count === 0) continue;
    const labels = { device: row.device, model: i.model, version: String(i.version) };
    const who = `${row.device} ${i.model} v${i.version}`;
    if (rule.alert === 'EdgefleetErrorRateHigh') {
      const pct = (100 * i.errors) / i.count;
      if (pct <= threshold) continue;
      hits.push({
        labels, value: pct,
        annotations: {
          summary: `${who}: ${fixed(pct, 1)} % errors over the last interval`,
          description: `${i.errors} of ${i.count} requests failed in the ${i.intervalS} s interval ending ${i.ts}; the rule fires above ${threshold} %.`,
        },
      });
    } else if (i.p99 !== null && i.p99 > threshold) {
      hits.push({
        labels, value: i.p99,
        annotations: {
          summary: `${who}: p99 latency ${fixed(i.p99, 1)} ms over the last interval`,
          description: `The ${i.intervalS} s interval ending ${i.ts} (${i.count} requests) had a p99 of ${fixed(i.p99, 1)} ms; the rule fires above ${threshold} ms.`,
        },
      });
    }
  }
  return hits;
}

function gpuHits(rule: AlertRule, row: FleetRow): Hit[] {
  const threshold = rule.threshold ?? 0;
  const hits: Hit[] = [];
  (row.health?.gpus ?? []).forEach((g, index) => {
    if (g.utilPct === null || g.utilPct <= threshold) return;
    hits.push({
      labels: { device: row.device, gpu: String(index) },
      value: g.utilPct,
      annotations: {
        summary: `${row.device} GPU ${index} (${g.name}): ${fixed(g.utilPct, 1)} % busy`,
        description: `GPU ${index} of ${row.device} reported ${fixed(g.utilPct, 1)} % utilisation at ${row.health?.ts ?? 'its last health point'}; the rule fires above ${threshold} %.`,
      },
    });
  });
  return hits;
}

/** Offline since it was last heard from: its status says so, or it has been silent for longer than `for`. */
function offlineHits(rule: AlertRule, row: FleetRow, now: number): Hit[] {
  const lastSeen = row.lastSeen === null ? undefined : parseTime(row.lastSeen);
  if (lastSeen === undefined) return [];
  const silent = now - lastSeen > rule.forMs;
  if (row.online !== false && !silent) return [];
  const why = row.online === false ? 'its status says offline' : 'it has sent nothing';
  return [{
    labels: { device: row.device },
    value: null,
    since: lastSeen,
    annotations: {
      summary: `${row.device} offline since ${row.lastSeen ?? ''}`,
      description: `${row.device} was last heard from at ${row.lastSeen ?? ''} and ${why}.`,
    },
  }];
}

function temperatureHits(rule: AlertRule, row: FleetRow): Hit[] {
  const threshold = rule.threshold ?? 0;
  const t = row.health?.tempC;
  if (t === null || t === undefined || t <= threshold) return [];
  return [{
    labels: { device: row.device },
    value: t,
    annotations: {
      summary: `${row.device}: board at ${fixed(t, 1)} C`,
      description: `${row.device} reported a board temperature of ${fixed(t, 1)} C at ${row.health?.ts ?? ''}; the rule fires above ${threshold} C.`,
    },
  }];
}

function droppedHits(rule: AlertRule, row: FleetRow, now: number): Hit[] {
  const lastAt = row.dropped.lastAt === null ? undefined : parseTime(row.dropped.lastAt);
  if (row.dropped.count === 0 || lastAt === undefined || now - lastAt > (rule.windowMs ?? 0)) return [];
  return [{
    labels: { device: row.device },
    value: row.dropped.count,
    annotations: {
      summary: `${row.device} dropped telemetry points (last report ${row.dropped.lastAt ?? ''})`,
      description: `${row.device} has reported ${row.dropped.count} telemetry points dropped on the device in all, the last report at ${row.dropped.lastAt ?? ''}: its buffer was full or the points were refused.`,
    },
  }];
}

function desiredHits(row: FleetRow): Hit[] {
  const d = row.desired;
  if (d === null || (d.status !== 'failed' && d.status !== 'rejected')) return [];
  return [{
    labels: { device: row.device },
    value: null,
    annotations: {
      summary: `${row.device}: desired serial ${d.serial} ${d.status}`,
      description: `${row.device} reports its desired-state document (serial ${d.serial}, from its ${d.source}) ${d.status}${d.error === null ? '' : `: ${d.error}`}.`,
    },
  }];
}

/** Each current rollout (planner.ts currentRollouts) a gate paused or that failed: one alert per model it rolls out. */
function rolloutHits(rule: AlertRule, rollouts: readonly Rollout[]): Hit[] {
  const hits: Hit[] = [];
  for (const r of currentRollouts(rollouts)) {
    if (rule.group !== null && r.spec.group !== rule.group) continue;
    if (!rolloutHalted(r)) continue;
    for (const m of r.spec.models) {
      if (rule.model !== null && m.name !== rule.model) continue;
      hits.push({
        labels: { rollout: r.id, model: m.name },
        value: null,
        since: r.updatedAt,
        annotations: {
          summary: `rollout ${r.id} (${m.name} v${m.version} to group ${r.spec.group}) ${r.status === 'failed' ? 'failed' : 'paused'}`,
          description: `${r.reason ?? ''} (wave ${r.wave + 1} of ${r.waves.length}, ${r.status} since ${formatTime(r.updatedAt)}).`,
        },
      });
    }
  }
  return hits;
}
