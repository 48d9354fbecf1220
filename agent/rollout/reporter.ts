import type { Logger } from 'pino';
import { formatTime, topics } from '../../protocol/index.js';
import type { DeviceEvent, ReportedModel, ReportedState, ReportedTrust } from '../../protocol/index.js';
import { errorMessage } from '../errors.js';
import type { ProviderReport } from '../runtime/providers.js';
import { agentVersion } from '../version.js';

/**
 * Owns the device's reported state (docs/protocol.md section 7) and publishes it
 * retained on `{root}/devices/{id}/state`, plus events on `.../events`.
 *
 * State publishes are coalesced: a burst of changes becomes one publish of
 * the latest state (at most one per coalesceMs; progress-only changes at most
 * one per progressIntervalMs). Only the latest state matters, so while offline
 * nothing is queued for it: every (re)connect republishes the full state.
 * Events each matter, so they queue in mqtt.js while offline (bounded).
 */

/** What the reporter needs from the MQTT connection; MqttConnection fits it. */
export interface ReportTransport {
  readonly connected: boolean;
  publishJson(topic: string, value: unknown, options?: { retain?: boolean; qos?: 0 | 1 }): Promise<void>;
  onConnect(listener: () => void): () => void;
}

export interface ReporterOptions {
  transport: ReportTransport;
  topicRoot: string;
  deviceId: string;
  groups: readonly string[];
  logger: Logger;
  executionProviders?: ProviderReport;
  coalesceMs?: number;
  progressIntervalMs?: number;
  /** Events waiting for the broker beyond this are dropped (and logged), so a long outage cannot eat memory. */
  maxPendingEvents?: number;
}

export type DesiredReport = ReportedState['desired'];
export type ModelPatch = Partial<Omit<ReportedModel, 'name' | 'version'>>;
export type EventFields = Pick<DeviceEvent, 'model' | 'version' | 'detail'>;

const modelKey = (name: string, version: number): string => `${name}\u0000${version}`;

export class Reporter {
  private readonly opts: ReporterOptions;
  private readonly log: Logger;
  private readonly stateTopic: string;
  private readonly eventsTopic: string;
  private readonly coalesceMs: number;
  private readonly progressIntervalMs: number;
  private readonly base: Omit<ReportedState, 'ts' | 'desired' | 'models' | 'trust'>;
  private desired: DesiredReport = null;
  /** Absent until the rollout says which trust is in force. */
  private trust: ReportedTrust | undefined;
  private readonly models = new Map<string, ReportedModel>();
  private dirty = true;
  private lastPublishAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerDueAt = 0;
  private readonly inFlight = new Set<Promise<void>>();
  private pendingEvents = 0;
  private unsubscribe: (() => void) | undefined;
  private running = false;

  constructor(options: ReporterOptions) {
    this.opts = options;
    this.log = options.logger;
    this.stateTopic = topics.device(options.topicRoot, options.deviceId, 'state');
    this.eventsTopic = topics.device(options.topicRoot, options.deviceId, 'events');
    this.coalesceMs = options.coalesceMs ?? 100;
    this.progressIntervalMs = options.progressIntervalMs ?? 1000;
    this.base = {
      schema: 1,
      device: options.deviceId,
      groups: [...options.groups],
      agent: {
        version: agentVersion(),
        arch: process.arch,
        startedAt: formatTime(),
        executionProviders: { available: [], unavailable: {} },
      },
    };
    if (options.executionProviders) this.setExecutionProviders(options.executionProviders);
  }

  /** Publishes the state now if connected, and again on every reconnect. */
  async start(): Promise<void> {
    this.running = true;
    this.unsubscribe = this.opts.transport.onConnect(() => this.publishNow());
    if (this.opts.transport.connected) this.publishNow();
  }

  /** Publishes a pending change (bounded by flush's timeout) and detaches from the connection. */
  async stop(): Promise<void> {
    await this.flush();
    this.running = false;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The state as it would be published now. */
  snapshot(): ReportedState {
    const models = [...this.models.values()].sort((a, b) => a.name.localeCompare(b.name) || a.version - b.version);
    return structuredClone({ ...this.base, ts: formatTime(), desired: this.desired, models, ...(this.trust && { trust: this.trust }) });
  }

  setExecutionProviders(report: ProviderReport): void {
    const unavailable: Record<string, string> = {};
    for (const [name, why] of Object.entries(report.unavailable)) if (why !== undefined) unavailable[name] = why;
    this.base.agent.executionProviders = { available: [...report.available], unavailable };
    this.changed(false);
  }

  setDesired(status: DesiredReport): void {
    this.desired = status === null ? null : { ...status };
    this.changed(false);
  }

  setTrust(trust: ReportedTrust): void {
    this.trust = { ...trust };
    this.changed(false);
  }

  /** Creates or updates one model version's entry; a change to `progress` alone is throttled harder. */
  setModel(name: string, version: number, patch: ModelPatch): void {
    const key = modelKey(name, version);
    const before = this.models.get(key);
    const next: ReportedModel = {
      ...(before ?? { name, version, state: 'pending', labels: [], executionProvider: null, sha256: null, progress: 0, error: null }),
      ...withoutUndefined(patch),
    };
    if (patch.labels) next.labels = [...patch.labels];
    this.models.set(key, next);
    const progressOnly = before !== undefined && Object.keys(patch).every((k) => k === 'progress');
    this.changed(progressOnly);
  }

  removeModel(name: string, version: number): void {
    if (this.models.delete(modelKey(name, version))) this.changed(false);
  }

  /** Publishes an event (non-retained QoS 1); never throws, failures are logged. */
  event(type: DeviceEvent['type'], fields: EventFields = {}): void {
    const maxPending = this.opts.maxPendingEvents ?? 1000;
    if (this.pendingEvents >= maxPending) {
      this.log.warn({ type, pending: this.pendingEvents }, 'too many events waiting for the broker; event dropped');
      return;
    }
    const event: DeviceEvent = { ts: formatTime(), type, ...withoutUndefined(fields) };
    this.pendingEvents += 1;
    this.track(
      this.opts.transport
        .publishJson(this.eventsTopic, event, { qos: 1 })
        .catch((err: unknown) => this.log.warn({ err: errorMessage(err), type }, 'event not published'))
        .finally(() => (this.pendingEvents -= 1)),
    );
  }

  /** Publishes a pending state change now and waits (at most timeoutMs) for what is in flight; never rejects. */
  async flush(timeoutMs = 2000): Promise<void> {
    if (this.dirty && this.opts.transport.connected) this.publishNow();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
    await Promise.race([Promise.allSettled([...this.inFlight]), timeout]);
    clearTimeout(timer);
  }

  private changed(progressOnly: boolean): void {
    this.dirty = true;
    if (!this.running || !this.opts.transport.connected) return; // the next connect publishes it
    const interval = progressOnly ? this.progressIntervalMs : this.coalesceMs;
    const dueAt = Math.max(Date.now(), this.lastPublishAt + interval);
    // A timer already set for sooner covers this change too; a later one is brought forward.
    if (this.timer !== undefined && this.timerDueAt <= dueAt) return;
    clearTimeout(this.timer);
    this.timerDueAt = dueAt;
    // Even "now" goes through a timer, so changes made in the same tick share one publish.
    this.timer = setTimeout(() => this.publishNow(), dueAt - Date.now());
  }

  private publishNow(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.running) return;
    this.dirty = false;
    this.lastPublishAt = Date.now();
    this.track(
      this.opts.transport.publishJson(this.stateTopic, this.snapshot(), { retain: true, qos: 1 }).catch((err: unknown) => {
        // Not acknowledged (e.g. stopped mid-way): publish again when possible.
        this.dirty = true;
        this.log.warn({ err: errorMessage(err) }, 'reported state not published');
      }),
    );
  }

  private track(p: Promise<void>): void {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p));
  }
}

function withoutUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
