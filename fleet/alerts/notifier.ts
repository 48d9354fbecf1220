/**
 * Delivers the alert outbox (alert-records.ts) to the webhook receivers in
 * Alertmanager's webhook JSON (version "4", Alertmanager's
 * docs/configuration.md `<webhook_config>`), so receivers written for
 * Alertmanager work unchanged.
 *
 * A notification leaves the outbox only once its receiver answered 2xx:
 * a receiver that is down, times out or answers 5xx, 408 or 429 gets the
 * same notifications again later, with capped exponential backoff and
 * jitter, for as long as it takes (at least once, in order per receiver).
 * Any other 4xx is the receiver refusing the message itself: it is marked
 * failed, logged, and shown by `edgefleet alerts`, not retried forever.
 */
import type { Logger } from 'pino';
import { formatTime } from '../../protocol/index.js';
import type { AlertRecords, OutboxEntry } from '../collector/alert-records.js';
import { errorMessage } from '../errors.js';
import type { AlertNotification } from './evaluator.js';
import type { Receiver } from './rules.js';

export interface WebhookAlert {
  status: 'firing' | 'resolved';
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
  generatorURL: string;
  fingerprint: string;
}

export interface WebhookMessage {
  version: '4';
  groupKey: string;
  truncatedAlerts: number;
  status: 'firing' | 'resolved';
  receiver: string;
  groupLabels: Record<string, string>;
  commonLabels: Record<string, string>;
  commonAnnotations: Record<string, string>;
  externalURL: string;
  alerts: WebhookAlert[];
}

/** Alertmanager's "no end yet": the zero time of Go, as it sends for a firing alert. */
export const NO_END = '0001-01-01T00:00:00Z';

/** Alerts in one message at most; a batch also ends where the alert name or the status changes. */
export const DEFAULT_BATCH = 100;

export interface Backoff {
  /** The first retry waits about this long (default 1 s). */
  baseMs: number;
  /** No wait is longer (default 5 min). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { baseMs: 1_000, maxMs: 300_000 };

/** The wait before retry number `failures` (1, 2, ...): doubling from base, capped, with half of it random (jitter). */
export function backoffMs(failures: number, b: Backoff, random: () => number = Math.random): number {
  const full = Math.min(b.maxMs, b.baseMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.round(full / 2 + (full / 2) * random());
}

/** The entries as one Alertmanager webhook message. */
export function webhookMessage(receiver: string, entries: readonly AlertNotification[], externalURL: string): WebhookMessage {
  const first = entries[0];
  if (first === undefined) throw new Error('webhookMessage: no alerts');
  const alertname = first.labels.alertname ?? '';
  const common = (pick: (n: AlertNotification) => Record<string, string>): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(pick(first))) if (entries.every((n) => pick(n)[k] === v)) out[k] = v;
    return out;
  };
  return {
    version: '4',
    groupKey: `{}:{alertname=${JSON.stringify(alertname)}}`,
    truncatedAlerts: 0,
    status: entries.some((n) => n.status === 'firing') ? 'firing' : 'resolved',
    receiver,
    groupLabels: { alertname },
    commonLabels: common((n) => n.labels),
    commonAnnotations: common((n) => ({ ...n.annotations })),
    externalURL,
    alerts: entries.map((n) => ({
      status: n.status,
      labels: n.labels,
      annotations: { ...n.annotations },
      startsAt: formatTime(n.startsAt),
      endsAt: n.endsAt === null ? NO_END : formatTime(n.endsAt),
      generatorURL: externalURL === '' ? '' : `${externalURL}/#alerts`,
      fingerprint: n.fingerprint,
    })),
  };
}

/** The leading entries that go in one message: same alert name and status, at most `max`. */
export function nextBatch(entries: readonly OutboxEntry[], max: number): OutboxEntry[] {
  const first = entries[0];
  if (first === undefined) return [];
  const key = (e: OutboxEntry): string => `${e.notification.status}\0${e.notification.labels.alertname ?? ''}`;
  const batch: OutboxEntry[] = [];
  for (const e of entries) {
    if (batch.length >= max || key(e) !== key(first)) break;
    batch.push(e);
  }
  return batch;
}

type Outcome = { ok: true } | { ok: false; permanent: boolean; error: string };

export interface NotifierOptions {
  records: AlertRecords;
  receivers: readonly Receiver[];
  externalURL: string;
  log: Logger;
  backoff?: Backoff;
  batch?: number;
  random?: () => number;
}

export class Notifier {
  /** Failures in a row per receiver, for the backoff; a success resets it. */
  private readonly failures = new Map<string, number>();
  /** Messages and alerts the receivers took, for tests and the log. */
  sent = 0;

  constructor(private readonly options: NotifierOptions) {}

  /** Sends what is due to every receiver; a receiver that fails waits for its backoff, the others go on. */
  async deliver(now: number): Promise<void> {
    for (const receiver of this.options.receivers) await this.deliverTo(receiver, now);
  }

  private async deliverTo(receiver: Receiver, now: number): Promise<void> {
    const max = this.options.batch ?? DEFAULT_BATCH;
    const { records, log } = this.options;
    for (;;) {
      const due = await records.due(receiver.name, now, max);
      const batch = nextBatch(due, max);
      if (batch.length === 0) return;
      const ids = batch.map((e) => e.id);
      const outcome = await this.post(receiver, webhookMessage(receiver.name, batch.map((e) => e.notification), this.options.externalURL));
      if (outcome.ok) {
        await records.delivered(ids);
        this.failures.delete(receiver.name);
        this.sent += batch.length;
        log.info({ receiver: receiver.name, alerts: batch.length, status: batch[0]?.notification.status }, 'alert notification delivered');
        continue;
      }
      if (outcome.permanent) {
        await records.refused(ids, outcome.error);
        log.error({ receiver: receiver.name, alerts: batch.length, err: outcome.error }, 'alert receiver refused the notification; it will not be sent again');
        continue;
      }
      const failures = (this.failures.get(receiver.name) ?? 0) + 1;
      this.failures.set(receiver.name, failures);
      const wait = backoffMs(failures, this.options.backoff ?? DEFAULT_BACKOFF, this.options.random);
      await records.retryAt(ids, now + wait, outcome.error);
      log.warn({ receiver: receiver.name, alerts: batch.length, err: outcome.error, retryInMs: wait }, 'alert notification not delivered; retrying');
      return;
    }
  }

  private async post(receiver: Receiver, message: WebhookMessage): Promise<Outcome> {
    let res: Response;
    try {
      res = await fetch(receiver.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'edgefleet-collector', ...receiver.headers },
        body: JSON.stringify(message),
        signal: AbortSignal.timeout(receiver.timeoutMs),
        redirect: 'error',
      });
    } catch (err) {
      // fetch says "fetch failed" and keeps the reason (ECONNREFUSED, a timeout) in its cause; the URL is left out, it may hold a token.
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const reason = (err as { name?: string }).name === 'TimeoutError' ? `no answer within ${receiver.timeoutMs} ms` : (cause?.code ?? cause?.message ?? errorMessage(err));
      return { ok: false, permanent: false, error: reason };
    }
    await res.body?.cancel().catch(() => undefined);
    if (res.status >= 200 && res.status < 300) return { ok: true };
    const error = `HTTP ${res.status}${res.statusText === '' ? '' : ` ${res.statusText}`}`;
    const permanent = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
    return { ok: false, permanent, error };
  }
}
