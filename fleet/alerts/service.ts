/**
 * The built-in alert evaluator as a collector component (`edgefleet collect
 * --alerts FILE`): every `everyMs` the collector holding the store's alert
 * lease reads the fleet rows, the rollouts and the alerts pending or firing,
 * runs the evaluator (evaluator.ts) and writes what changed with the
 * notifications it causes; every `deliverEveryMs` it hands the outbox to
 * the notifier. Collectors without the lease do neither, so several
 * collectors on one store notify once.
 */
import type { Logger } from 'pino';
import type { FleetStore } from '../collector/store.js';
import { errorMessage } from '../errors.js';
import { evaluate, type AlertState } from './evaluator.js';
import { Notifier, type Backoff } from './notifier.js';
import type { AlertRules } from './rules.js';

export interface AlertServiceOptions {
  store: FleetStore;
  rules: AlertRules;
  log: Logger;
  /** Who holds the lease: the collector's client id. */
  holder: string;
  /** How often the rules are evaluated (default 15 s). */
  everyMs?: number;
  /** How often the outbox is looked at (default 1 s). */
  deliverEveryMs?: number;
  /** Resolved alerts are listed this long (default 7 days). */
  keepResolvedMs?: number;
  backoff?: Backoff;
}

export const DEFAULT_EVALUATE_EVERY_MS = 15_000;
const DEFAULT_KEEP_RESOLVED_MS = 7 * 86_400_000;
/** Rollouts looked at (planner.ts currentRollouts picks from these, newest first). */
const ROLLOUTS_READ = 100;
/** A lease outlives a few missed ticks, so a slow tick does not hand the lead over. */
const LEASE_TICKS = 5;

export class AlertService {
  private sender: Notifier | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly running = new Set<Promise<void>>();
  private leading = false;
  private stopped = false;

  constructor(private readonly options: AlertServiceOptions) {}

  /** Made on first use: the store's alert records exist only once the store is initialised. */
  private get notifier(): Notifier {
    const { store, rules, log, backoff } = this.options;
    this.sender ??= new Notifier({ records: store.alerts, receivers: rules.receivers, externalURL: rules.externalURL, log, ...(backoff && { backoff }) });
    return this.sender;
  }

  private get everyMs(): number {
    return this.options.everyMs ?? DEFAULT_EVALUATE_EVERY_MS;
  }

  start(): void {
    this.loop(() => this.tick(Date.now()), this.everyMs, 'alert evaluation failed; trying again next tick');
    this.loop(() => this.deliver(Date.now()), this.options.deliverEveryMs ?? 1_000, 'alert delivery failed; trying again');
    this.options.log.info({ rules: this.options.rules.rules.length, receivers: this.options.rules.receivers.map((r) => r.name), everyMs: this.everyMs }, 'alert evaluator started');
  }

  /** Runs `work` now and then `everyMs` after each run ends, until stop(). */
  private loop(work: () => Promise<void>, everyMs: number, failed: string): void {
    const run = (): void => {
      const done: Promise<void> = work()
        .catch((err: unknown) => this.options.log.warn({ err: errorMessage(err) }, failed))
        .finally(() => {
          this.running.delete(done);
          if (this.stopped) return;
          const timer = setTimeout(() => {
            this.timers.delete(timer);
            run();
          }, everyMs);
          this.timers.add(timer);
        });
      this.running.add(done);
    };
    run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    await Promise.all([...this.running]);
    if (this.leading) await this.options.store.alerts.resign(this.options.holder).catch(() => undefined);
    this.leading = false;
  }

  /** One evaluation, when this collector holds the lease. Public for tests. */
  async tick(now: number): Promise<void> {
    const { store, rules, log, holder } = this.options;
    const leading = await store.alerts.lead(holder, this.everyMs * LEASE_TICKS);
    if (leading !== this.leading) log.info({ holder }, leading ? 'alert evaluator: leading' : 'alert evaluator: another collector evaluates');
    this.leading = leading;
    if (!leading) return;
    const [rows, rollouts, active] = await Promise.all([store.fleetStatus(), store.rollouts.list({ limit: ROLLOUTS_READ }), store.alerts.active()]);
    const prior = new Map<string, AlertState>(active.map((a) => [a.fingerprint, a]));
    const result = evaluate(rules.rules, { now, rows, rollouts }, prior);
    if (result.changed.length === 0 && result.dropped.length === 0) return;
    const outbox = result.notifications.flatMap((notification) => rules.receivers.map((r) => ({ receiver: r.name, notification })));
    await store.alerts.record({ ...result, outbox, now, forgetBefore: now - (this.options.keepResolvedMs ?? DEFAULT_KEEP_RESOLVED_MS) });
    const count = (status: string): number => result.notifications.filter((n) => n.status === status).length;
    log.info({ firing: count('firing'), resolved: count('resolved'), pending: result.changed.filter((a) => a.state === 'pending').length }, 'alerts changed');
    for (const n of result.notifications.slice(0, 20)) log.info({ alert: n.labels, status: n.status }, n.annotations.summary);
  }

  /** Sends what the outbox holds that is due, when this collector holds the lease. Public for tests. */
  async deliver(now: number): Promise<void> {
    if (this.leading) await this.notifier.deliver(now);
  }

  /** Alerts the receivers took (for tests). */
  get delivered(): number {
    return this.notifier.sent;
  }
}
