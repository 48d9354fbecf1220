/**
 * Alerts as `edgefleet alerts --json` and the dashboard's /api/alerts give
 * them: RFC 3339 times, the alert's own labels apart from its name and
 * severity, active ones first (firing, then pending, newest first), then
 * the recently resolved.
 */
import { formatTime } from '../../protocol/index.js';
import type { FleetStore } from '../collector/store.js';
import type { OutboxSummary } from '../collector/alert-records.js';
import type { AlertState } from './evaluator.js';

export interface AlertView {
  fingerprint: string;
  alertname: string;
  severity: string;
  state: AlertState['state'];
  /** The labels besides alertname and severity (device, model, version, gpu, rollout). */
  labels: Record<string, string>;
  summary: string;
  description: string;
  /** When the condition began. */
  activeSince: string;
  firedAt: string | null;
  resolvedAt: string | null;
}

export interface OutboxView {
  receiver: string;
  waiting: number;
  failed: number;
  oldestAt: string;
  lastError: string | null;
}

export interface AlertsReport {
  active: AlertView[];
  resolved: AlertView[];
  /** Webhook notifications not delivered yet, or refused, per receiver. */
  outbox: OutboxView[];
}

/** Resolved alerts listed unless all are asked for. */
export const RECENT_RESOLVED = 20;
/** All the resolved alerts kept (7 days' worth) up to this many. */
export const MAX_RESOLVED = 10_000;

const time = (ms: number | null): string | null => (ms === null ? null : formatTime(ms));

export function alertView(a: AlertState): AlertView {
  const { alertname = '', severity = '', ...labels } = a.labels;
  return {
    fingerprint: a.fingerprint, alertname, severity, state: a.state, labels, summary: a.annotations.summary, description: a.annotations.description,
    activeSince: formatTime(a.activeSince), firedAt: time(a.firedAt), resolvedAt: time(a.resolvedAt),
  };
}

const outboxView = (o: OutboxSummary): OutboxView => ({ ...o, oldestAt: formatTime(o.oldestAt) });

/** Firing before pending; within each, the newest first. */
function byUrgency(a: AlertState, b: AlertState): number {
  if (a.state !== b.state) return a.state === 'firing' ? -1 : 1;
  return (b.firedAt ?? b.activeSince) - (a.firedAt ?? a.activeSince) || (a.fingerprint < b.fingerprint ? -1 : 1);
}

export async function readAlerts(store: FleetStore, resolvedLimit = RECENT_RESOLVED): Promise<AlertsReport> {
  const [active, resolved, outbox] = await Promise.all([store.alerts.active(), store.alerts.resolved(resolvedLimit), store.alerts.outbox()]);
  return { active: active.sort(byUrgency).map(alertView), resolved: resolved.map(alertView), outbox: outbox.map(outboxView) };
}
