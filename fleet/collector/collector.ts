/**
 * The collector's MQTT side. Telemetry and events come through MQTT 5 shared
 * subscriptions, so several collectors split the load; status and state are
 * retained and every collector wants the latest, so those are plain
 * subscriptions. The session is persistent (clean: false, a stable client
 * id, a session expiry), so a restarted collector gets what it missed.
 *
 * A message is acknowledged (PUBACK) only after the store has it: mqtt.js
 * calls `customHandleAcks` before it acknowledges a QoS 1 PUBLISH, and we
 * answer once the write has committed. When a write fails we do not answer,
 * and drop the connection: the broker sends every unacknowledged message of
 * the session again after the reconnect. mqtt.js hands over one PUBLISH at a
 * time, so writes happen in arrival order, one after the other.
 *
 * Over MQTT 3.1.1 (`protocolVersion: 4`, for brokers such as aedes) there are
 * no shared subscriptions: telemetry and events are plain subscriptions, so
 * every collector on the broker gets (and stores) every message, and only one
 * collector per store makes sense. mqtt.js ignores `customHandleAcks` on
 * 3.1.1; it acknowledges a QoS 1 PUBLISH once `handleMessage` calls back, so
 * the collector stores there and store-then-acknowledge still holds (3.1.1
 * also resends a persistent session's unacknowledged QoS 1 messages on
 * reconnect). A 3.1.1 PUBACK cannot say why a message was refused, and there
 * is no session expiry: the broker keeps the session as long as its own
 * settings say, and a session expiry of 0 becomes a clean session instead.
 */
import { connect } from 'mqtt';
import type { IClientOptions, ISubscriptionMap, MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import { safeUrl } from '../../lib/broker.js';
import type { ParsedTopic } from '../../protocol/index.js';
import type { TelemetryPoint } from '../../protocol/index.js';
import { eventSchema, formatTime, parseTopic, reportedStateSchema, statusSchema, telemetryBatchSchema, topics, validate } from '../../protocol/index.js';
import type { z } from 'zod';
import { FailureError, errorMessage } from '../errors.js';
import type { BrokerSettings, MqttProtocolVersion } from '../mqtt.js';
import type { QuotaLimits } from './ingest-guard.js';
import { CountBuffer, DEFAULT_QUOTAS, DeviceQuotas, arrivalClamped, isPermanentStoreError, normaliseText } from './ingest-guard.js';
import type { FleetStore } from './store.js';
import { QUARANTINE_EXCERPT_BYTES, millis } from './store.js';

/** PUBACK reason codes (MQTT 5, 3.4.2.1). */
const SUCCESS = 0x00;
const PAYLOAD_FORMAT_INVALID = 0x99;
const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9e;
const IMPLEMENTATION_SPECIFIC_ERROR = 0x83;
const QUOTA_EXCEEDED = 0x97;

/** Acknowledgements of one device within this long go out as one publish. */
const ACK_COALESCE_MS = 250;
const COUNTS_FLUSH_MS = 2_000;

const FIRST_CONNECT_TIMEOUT_MS = 30_000;
const DEFAULT_PRUNE_EVERY_MS = 3_600_000;

export interface CollectorOptions {
  broker: BrokerSettings;
  store: FleetStore;
  /** Stable per collector instance: the broker keeps this id's session while it is away. */
  clientId: string;
  /** Collectors with the same share group split telemetry and events between them (MQTT 5 only). */
  shareGroup: string;
  /** How long the broker keeps the session (and queues messages) after a disconnect (MQTT 5; on 3.1.1 only 0 counts: a clean session). */
  sessionExpiryS: number;
  /** Points and events older than this are deleted; null keeps everything. */
  retentionMs: number | null;
  pruneEveryMs?: number;
  reconnectMs?: number;
  /**
   * MQTT 5 sessions in the share group (default 1). mqtt.js hands one
   * connection's messages over one at a time, each acknowledged after its
   * commit, so one session stores at most one message per commit; with
   * several, the store commits what they bring together (SQLite: one fsync
   * for several messages; PostgreSQL: transactions in parallel).
   */
  connections?: number;
  /** Per-device limits; DEFAULT_QUOTAS where not given (docs/collector.md). */
  quotas?: Partial<QuotaLimits>;
  log: Logger;
}

export interface CollectorStats {
  batches: number;
  points: number;
  duplicates: number;
  events: number;
  statuses: number;
  states: number;
  /** Messages acknowledged without storing: not valid per docs/protocol.md section 7 (also counted in quarantined). */
  rejected: number;
  /** Messages kept in the quarantine table instead of being stored: not valid, or refused by the database. */
  quarantined: number;
  /** Messages and points dropped for a device's quotas. */
  overQuota: number;
  /** Device times replaced with the arrival time. */
  clockSkewed: number;
  /** Characters replaced in device text (NUL, unpaired surrogates). */
  normalised: number;
  /** Telemetry acknowledgements published (section 12). */
  acks: number;
  /** Subscriptions made: the first, and one after each reconnect to a restored session. */
  subscribes: number;
  /** Device messages received per channel, stored or not (the metrics' edgefleet_collector_messages_total). */
  received: Record<DeviceTopic['kind'], number>;
  /**
   * For the latest batch that stored new points: from its newest point's
   * time to the commit (ms); null before one. A device sending its buffer
   * after an outage raises it for that batch.
   */
  ingestLagMs: number | null;
}

type DeviceTopic = Extract<ParsedTopic, { kind: 'status' | 'state' | 'events' | 'telemetry' }>;

export class Collector {
  readonly stats: CollectorStats = {
    batches: 0,
    points: 0,
    duplicates: 0,
    events: 0,
    statuses: 0,
    states: 0,
    rejected: 0,
    quarantined: 0,
    overQuota: 0,
    clockSkewed: 0,
    normalised: 0,
    acks: 0,
    subscribes: 0,
    received: { telemetry: 0, events: 0, status: 0, state: 0 },
    ingestLagMs: null,
  };
  private readonly quotas: DeviceQuotas;
  private readonly counts = new CountBuffer();
  private readonly warned = new Map<string, { at: number; skipped: number }>();
  /** Devices with a committed batch since the last acknowledgement pass: the lowest first seq of those batches. */
  private ackPending = new Map<string, number>();
  /** The highest upTo this collector published per device: what it publishes never goes down. */
  private readonly published = new Map<string, number>();
  private ackTimer: NodeJS.Timeout | undefined;
  private acking: Promise<void> | undefined;
  private stopping = false;
  private countsTimer: NodeJS.Timeout | undefined;
  private client: MqttClient | undefined;
  /** The sessions beyond the first: telemetry and events only, through the share group. */
  private lanes: MqttClient[] = [];
  private readonly droppingClients = new WeakSet<MqttClient>();
  private pruneTimer: NodeJS.Timeout | undefined;
  private pruning: Promise<void> | undefined;

  constructor(private readonly options: CollectorOptions) {
    this.quotas = new DeviceQuotas({ ...DEFAULT_QUOTAS, ...options.quotas });
  }

  get protocolVersion(): MqttProtocolVersion {
    return this.options.broker.protocolVersion ?? 5;
  }

  /** Sessions beyond the first (MQTT 5 only): `connections` - 1. */
  private get laneCount(): number {
    return this.protocolVersion === 5 ? Math.max(1, this.options.connections ?? 1) - 1 : 0;
  }

  /**
   * The first session's subscriptions, by filter: shared for telemetry and
   * events, plain for the retained channels (MQTT 3.1.1 has no shared
   * subscriptions: all plain). With more sessions, the first takes the
   * retained channels only: after a (re)start every device's retained status
   * and state arrive at once, one commit each, and telemetry must not queue
   * behind them.
   */
  subscriptions(): ISubscriptionMap {
    const root = this.options.broker.topicRoot;
    const retained: ISubscriptionMap = {
      [topics.allDevices(root, 'status')]: { qos: 1 },
      [topics.allDevices(root, 'state')]: { qos: 1 },
    };
    if (this.laneCount > 0) return retained;
    return { ...this.sharedSubscriptions(), ...retained };
  }

  /** Telemetry and events: shared in the group on MQTT 5, plain on 3.1.1. */
  private sharedSubscriptions(): ISubscriptionMap {
    const root = this.options.broker.topicRoot;
    const shared = (filter: string): string => (this.protocolVersion === 5 ? `$share/${this.options.shareGroup}/${filter}` : filter);
    return {
      [shared(topics.allDevices(root, 'telemetry'))]: { qos: 1 },
      [shared(topics.allDevices(root, 'events'))]: { qos: 1 },
    };
  }

  async start(): Promise<void> {
    const { broker, log } = this.options;
    const client = connect(broker.url, this.clientOptions());
    this.client = client;
    if (this.protocolVersion === 4) {
      // mqtt.js sends a 3.1.1 PUBACK once handleMessage calls back, and none when it calls back with an error.
      client.handleMessage = (packet, done) => {
        this.handle(packet.topic, typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload).then(
          () => done(),
          (err: unknown) => {
            done(err instanceof Error ? err : new Error(String(err)));
            this.storeFailed(packet.topic, err);
          },
        );
      };
    }
    client.on('error', (err) => log.warn({ err: errorMessage(err) }, 'mqtt problem'));
    client.on('offline', () => log.warn({ broker: safeUrl(broker.url) }, 'broker connection lost, reconnecting'));
    let first = true;
    client.on('connect', (connack) => {
      this.droppingClients.delete(client);
      log.info({ broker: safeUrl(broker.url), sessionPresent: connack.sessionPresent }, 'connected to the broker');
      // A broker restored from its persistence can come back with the session but
      // without its shared subscriptions (Mosquitto 2 does not persist them), and
      // mqtt.js resubscribes only when the session is gone: subscribe again each time.
      if (!first && connack.sessionPresent) {
        this.subscribe(client, true).catch((err: unknown) => log.error({ err: errorMessage(err) }, 'could not subscribe again after reconnecting'));
      }
      first = false;
    });
    try {
      await firstConnect(client, broker.url);
      await this.subscribe(client);
      for (let i = 1; i <= this.laneCount; i++) await this.openLane(i);
      // A session that took telemetry under an earlier --connections 1 keeps that subscription in its session: drop it.
      if (this.laneCount > 0) await client.unsubscribeAsync(Object.keys(this.sharedSubscriptions()));
    } catch (err) {
      await client.endAsync(true);
      for (const lane of this.lanes.splice(0)) await lane.endAsync(true);
      throw err;
    }
    this.countsTimer = setInterval(() => void this.flushCounts(), COUNTS_FLUSH_MS);
    if (this.options.retentionMs !== null) {
      await this.prune();
      this.pruneTimer = setInterval(() => void this.prune(), this.options.pruneEveryMs ?? DEFAULT_PRUNE_EVERY_MS);
    }
    const group = this.protocolVersion === 5 ? { shareGroup: this.options.shareGroup } : { protocolVersion: this.protocolVersion };
    log.info({ clientId: this.options.clientId, ...group, store: this.options.store.kind }, 'collector started');
  }

  /** Disconnects cleanly; the broker keeps the session for the next start. */
  async stop(): Promise<void> {
    clearInterval(this.pruneTimer);
    clearInterval(this.countsTimer);
    this.stopping = true;
    clearTimeout(this.ackTimer);
    await this.acking;
    // What was committed is acknowledged before leaving, so devices need not wait for a re-send.
    if (this.ackPending.size > 0) await this.flushAcks();
    await this.flushCounts();
    await this.pruning;
    for (const lane of this.lanes.splice(0)) await lane.endAsync();
    await this.client?.endAsync();
    this.client = undefined;
  }

  /** Another session in the share group, for telemetry and events only (see `connections`). */
  private async openLane(i: number): Promise<void> {
    const { broker, log } = this.options;
    const filters = this.sharedSubscriptions();
    const lane: MqttClient = connect(broker.url, {
      ...this.clientOptions(),
      clientId: `${this.options.clientId}~${i}`,
      customHandleAcks: (topic: string, payload: Buffer, _packet: unknown, ack: (err: Error | number, code?: number) => void) => {
        this.handle(topic, payload).then(
          (code) => ack(code),
          (err: unknown) => {
            ack(err instanceof Error ? err : new Error(String(err)));
            this.storeFailed(topic, err, lane);
          },
        );
      },
    });
    this.lanes.push(lane);
    lane.on('error', (err) => log.warn({ lane: i, err: errorMessage(err) }, 'mqtt problem'));
    let first = true;
    lane.on('connect', (connack) => {
      this.droppingClients.delete(lane);
      if (!first && connack.sessionPresent) {
        lane.subscribeAsync({ ...filters, resubscribe: true } as unknown as ISubscriptionMap).catch((err: unknown) => log.error({ lane: i, err: errorMessage(err) }, 'could not subscribe again after reconnecting'));
      }
      first = false;
    });
    await firstConnect(lane, broker.url);
    const grants = await lane.subscribeAsync(filters);
    const refused = grants.filter((g) => g.qos >= 0x80);
    if (refused.length > 0) throw new FailureError(`broker refused the subscription to ${refused.map((g) => g.topic).join(', ')}`);
  }

  /** Deletes what is older than the retention; logs, never throws. */
  prune(): Promise<void> {
    const retention = this.options.retentionMs;
    if (retention === null || this.pruning !== undefined) return this.pruning ?? Promise.resolve();
    const { store, log } = this.options;
    this.pruning = store
      .prune(Date.now() - retention)
      .then(
        (deleted) => {
          if (deleted.points + deleted.events > 0) log.info(deleted, 'deleted points and events older than the retention');
        },
        (err: unknown) => log.error({ err: errorMessage(err) }, 'could not delete old points'),
      )
      .finally(() => (this.pruning = undefined));
    return this.pruning;
  }

  private clientOptions(): IClientOptions {
    const { broker, sessionExpiryS } = this.options;
    const v5 = this.protocolVersion === 5;
    return {
      protocolVersion: this.protocolVersion,
      // 3.1.1 cannot ask for an expiry; "end the session with the connection" is a clean session there.
      clean: !v5 && sessionExpiryS === 0,
      clientId: this.options.clientId,
      ...(v5 && { properties: { sessionExpiryInterval: sessionExpiryS } }),
      reconnectPeriod: this.options.reconnectMs ?? 2000,
      connectTimeout: 10_000,
      // mqtt.js honours customHandleAcks on MQTT 5 only; on 3.1.1 start() hooks handleMessage instead.
      ...(v5 && {
        customHandleAcks: (topic: string, payload: Buffer, _packet: unknown, ack: (err: Error | number, code?: number) => void) => {
          this.handle(topic, payload).then(
            (code) => ack(code),
            (err: unknown) => {
              ack(err instanceof Error ? err : new Error(String(err)));
              this.storeFailed(topic, err);
            },
          );
        },
      }),
      ...broker.tls,
      ...(broker.username !== undefined && { username: broker.username }),
      ...(broker.password !== undefined && { password: broker.password }),
    };
  }

  private async subscribe(client: MqttClient, again = false): Promise<void> {
    // `resubscribe` makes mqtt.js send it although it counts these topics as subscribed.
    const map = again ? ({ ...this.subscriptions(), resubscribe: true } as unknown as ISubscriptionMap) : this.subscriptions();
    const grants = await client.subscribeAsync(map);
    this.stats.subscribes++;
    const refused = grants.filter((g) => g.qos >= 0x80);
    if (refused.length === 0) return;
    const shared = refused.some((g) => (g.qos as number) === SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
      ? ' (the broker does not support MQTT 5 shared subscriptions; --mqtt-version 4 subscribes without them)'
      : '';
    throw new FailureError(`broker refused the subscription to ${refused.map((g) => g.topic).join(', ')}${shared}`);
  }

  private storeFailed(topic: string, err: unknown, client = this.client): void {
    this.options.log.error({ topic, err: errorMessage(err) }, 'could not store a message; it stays unacknowledged and comes again after a reconnect');
    this.redeliver(client);
  }

  /** Unacknowledged messages are sent again only on a new connection (MQTT 5 and 3.1.1, 4.4). */
  private redeliver(client: MqttClient | undefined): void {
    if (client === undefined || this.droppingClients.has(client)) return;
    this.droppingClients.add(client);
    client.stream.destroy();
  }

  /**
   * Stores one message; resolves to the PUBACK reason code, rejects when the
   * store failed for a passing reason (the message stays unacknowledged and
   * the broker sends it again). Everything retrying cannot fix is
   * acknowledged: over quota (counted), not valid or refused by the database
   * (quarantined with why, and counted).
   */
  private async handle(topic: string, payload: Buffer): Promise<number> {
    const parsed = parseTopic(this.options.broker.topicRoot, topic);
    // Not a device channel (or an empty retained message, which deletes one): nothing to store.
    if (parsed === undefined || !isDeviceTopic(parsed) || payload.length === 0) return SUCCESS;
    const device = parsed.deviceId;
    const receivedAt = Date.now();
    this.stats.received[parsed.kind] += 1;
    const over = this.quotas.admit(device, payload.length, receivedAt);
    if (over !== undefined) return this.refuseOverQuota(device, topic, over);
    if (parsed.kind === 'events' && payload.length > this.quotas.limits.maxEventBytes) {
      return this.refuseOverQuota(device, topic, `event of ${payload.length} bytes is over ${this.quotas.limits.maxEventBytes}`);
    }
    let write: () => Promise<void>;
    try {
      write = await this.writer(parsed, payload, receivedAt);
    } catch (err) {
      this.stats.rejected += 1;
      await this.quarantine(device, topic, payload, receivedAt, `not valid: ${errorMessage(err)}`);
      return PAYLOAD_FORMAT_INVALID;
    }
    try {
      await write();
    } catch (err) {
      if (!isPermanentStoreError(err)) throw err;
      await this.quarantine(device, topic, payload, receivedAt, `refused by the ${this.options.store.kind} store: ${errorMessage(err)}`);
      return IMPLEMENTATION_SPECIFIC_ERROR;
    }
    return SUCCESS;
  }

  private refuseOverQuota(device: string, topic: string, why: string): number {
    this.stats.overQuota += 1;
    this.counts.add(device, 'overQuota');
    this.warnOnce(`quota/${device}`, { device, topic, why }, 'message over the device quota: dropped and counted');
    return QUOTA_EXCEEDED;
  }

  /**
   * Keeps a message that will not be stored, with why; a passing store
   * failure leaves it unacknowledged. The reason can quote the payload
   * (JSON.parse does: "Unexpected token '\u0000'"), so it is normalised like
   * device text; should the store still refuse the entry for good, the
   * message is acknowledged and counted all the same: it must not come back.
   */
  private async quarantine(device: string, topic: string, payload: Buffer, receivedAt: number, reason: string): Promise<void> {
    const excerpt = Buffer.from(payload.subarray(0, QUARANTINE_EXCERPT_BYTES));
    const text = normaliseText(reason.slice(0, 1000)).value as string;
    try {
      await this.options.store.quarantine({ device, topic, receivedAt, reason: text, size: payload.length, excerpt });
    } catch (err) {
      if (!isPermanentStoreError(err)) throw err;
      this.warnOnce(`quarantine-refused/${device}`, { device, topic, reason: text, err: errorMessage(err) }, 'the store refused the quarantine entry too: acknowledged, counted, not kept');
    }
    this.stats.quarantined += 1;
    this.counts.add(device, 'quarantined');
    this.warnOnce(`quarantine/${device}`, { device, topic, reason }, 'message quarantined: acknowledged, not stored');
  }

  /** Logs a warning at most once a minute per key, with how many were not logged. */
  private warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    const seen = this.warned.get(key);
    if (seen !== undefined && now - seen.at < 60_000) {
      seen.skipped++;
      return;
    }
    if (this.warned.size > 10_000) this.warned.clear();
    this.warned.set(key, { at: now, skipped: 0 });
    this.options.log.warn({ ...fields, ...(seen?.skipped && { notLogged: seen.skipped }) }, message);
  }

  /** A device time that is too far from arrival becomes the arrival time, counted. */
  private clamp(device: string, time: string, receivedAt: number): string {
    const { ms, skewed } = arrivalClamped(millis(time), receivedAt, this.quotas.limits.maxSkewMs);
    if (!skewed) return time;
    this.stats.clockSkewed += 1;
    this.counts.add(device, 'clockSkewed');
    this.warnOnce(`clock/${device}`, { device, deviceTime: time }, 'device clock too far from arrival: stored with the arrival time');
    return formatTime(ms);
  }

  /** Parses a message (throwing when it is invalid) into the write that stores it. */
  private async writer(topic: DeviceTopic, payload: Buffer, receivedAt: number): Promise<() => Promise<void>> {
    const { store } = this.options;
    const device = topic.deviceId;
    const stats = this.stats;
    const kind = topic.kind;
    switch (kind) {
      case 'telemetry': {
        const batch = this.parse(telemetryBatchSchema, payload, 'telemetry batch');
        if (batch.device !== device) throw new Error(`telemetry batch names device "${batch.device}"`);
        const points = await this.admitPoints(device, batch.points, receivedAt);
        return async () => {
          const added = await store.insertPoints(device, points, receivedAt);
          stats.batches += 1;
          stats.points += added;
          stats.duplicates += points.length - added;
          if (added > 0) stats.ingestLagMs = Math.max(0, Date.now() - Math.max(...points.map((p) => millis(p.ts))));
          if (points.length > 0) this.acknowledge(device, Math.min(...points.map((p) => p.seq)));
        };
      }
      case 'events': {
        const event = this.parse(eventSchema, payload, 'event');
        event.ts = this.clamp(device, event.ts, receivedAt);
        return async () => {
          if (await store.insertEvent(device, event, receivedAt)) stats.events += 1;
        };
      }
      case 'status': {
        const status = this.parse(statusSchema, payload, 'status');
        if (status.ts !== undefined) status.ts = this.clamp(device, status.ts, receivedAt);
        return async () => {
          await store.upsertStatus(device, status, receivedAt);
          stats.statuses += 1;
        };
      }
      case 'state': {
        const state = this.parse(reportedStateSchema, payload, 'reported state');
        if (state.device !== device) throw new Error(`reported state names device "${state.device}"`);
        state.ts = this.clamp(device, state.ts, receivedAt);
        return async () => {
          await store.upsertState(state, receivedAt);
          stats.states += 1;
        };
      }
      default: {
        const never: never = kind;
        throw new Error(`unexpected channel ${String(never)}`);
      }
    }
  }

  /** UTF-8 JSON, text normalised (NUL and unpaired surrogates replaced), then checked against the schema. */
  private parse<S extends z.ZodType>(schema: S, payload: Buffer, what: string): z.output<S> {
    let value: unknown;
    try {
      value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
    } catch (err) {
      throw new Error(`${what} is not UTF-8 JSON: ${errorMessage(err)}`);
    }
    const normalised = normaliseText(value);
    this.stats.normalised += normalised.replaced;
    return validate(schema, normalised.value, what);
  }

  /**
   * The points of a batch as they will be stored: times clamped to arrival,
   * and points under model names beyond the device's quota replaced by a
   * tombstone row (kind 'over-quota'): not stored, counted, but their seq is
   * accounted for, so the device's acknowledged prefix goes past them.
   */
  private async admitPoints(device: string, points: readonly TelemetryPoint[], receivedAt: number): Promise<TelemetryPoint[]> {
    if (!this.quotas.knowsModels(device)) this.quotas.setModels(device, await this.options.store.deviceModels(device));
    const out: TelemetryPoint[] = [];
    let refused = 0;
    for (const p of points) {
      const ts = this.clamp(device, p.ts, receivedAt);
      if (p.kind === 'inference' && !this.quotas.admitModel(device, p.model)) {
        refused++;
        out.push({ seq: p.seq, ts, kind: 'over-quota', model: p.model } as unknown as TelemetryPoint);
        continue;
      }
      out.push(ts === p.ts ? p : { ...p, ts });
    }
    if (refused > 0) {
      this.stats.overQuota += refused;
      this.counts.add(device, 'overQuota', refused);
      this.warnOnce(`models/${device}`, { device, maxModels: this.quotas.limits.maxModels }, 'points under more model names than the quota: dropped and counted');
    }
    return out;
  }

  /**
   * Notes a committed batch; its device's acknowledged prefix is worked out
   * and published at the next pass (every ACK_COALESCE_MS), one store
   * transaction for every device of the pass: at 1,000 batches/s that is 4
   * transactions a second instead of 1,000.
   */
  private acknowledge(device: string, firstSeq: number): void {
    const seen = this.ackPending.get(device);
    if (seen === undefined || firstSeq < seen) this.ackPending.set(device, firstSeq);
    this.scheduleAcks();
  }

  private scheduleAcks(): void {
    if (this.stopping || this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.acking = this.flushAcks().finally(() => {
        this.ackTimer = undefined;
        this.acking = undefined;
        if (this.ackPending.size > 0) this.scheduleAcks();
      });
    }, ACK_COALESCE_MS);
  }

  /** One acknowledgement pass; on a store failure the devices wait for the next. */
  private async flushAcks(): Promise<void> {
    const pending = this.ackPending;
    this.ackPending = new Map();
    let acked: Map<string, number>;
    try {
      acked = await this.options.store.acknowledge(pending);
    } catch (err) {
      for (const [device, firstSeq] of pending) {
        const seen = this.ackPending.get(device);
        if (seen === undefined || firstSeq < seen) this.ackPending.set(device, firstSeq);
      }
      this.warnOnce('ack', { devices: pending.size, err: errorMessage(err) }, 'could not work out telemetry acknowledgements; trying again');
      return;
    }
    this.publishAcks(acked);
  }

  private publishAcks(acked: ReadonlyMap<string, number>): void {
    const client = this.client;
    if (client === undefined) return;
    const root = this.options.broker.topicRoot;
    for (const [device, stored] of acked) {
      const upTo = Math.max(stored, this.published.get(device) ?? stored);
      this.published.set(device, upTo);
      const body = JSON.stringify({ schema: 1, device, upTo });
      client.publish(topics.telemetryAck(root, device), body, { qos: 1, retain: true }, (err) => {
        if (err) this.warnOnce('ack-publish', { device, err: errorMessage(err) }, 'could not publish a telemetry acknowledgement');
        else this.stats.acks += 1;
      });
    }
  }

  /** Writes the per-device counters gathered since the last flush; on failure they are kept for the next. */
  private async flushCounts(): Promise<void> {
    if (this.counts.size === 0) return;
    const counts = this.counts.take();
    try {
      await this.options.store.addCounts(counts);
    } catch (err) {
      this.counts.restore(counts);
      this.warnOnce('counts', { err: errorMessage(err) }, 'could not store the per-device counters; kept for the next try');
    }
  }
}

function isDeviceTopic(t: ParsedTopic): t is DeviceTopic {
  return t.kind === 'status' || t.kind === 'state' || t.kind === 'events' || t.kind === 'telemetry';
}

/** Waits for the first CONNACK; later drops are retried by mqtt.js itself. */
function firstConnect(client: MqttClient, url: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`no connection within ${FIRST_CONNECT_TIMEOUT_MS / 1000} s`)), FIRST_CONNECT_TIMEOUT_MS);
    const done = (): void => {
      clearTimeout(timer);
      client.off('connect', onConnect);
      client.off('error', fail);
    };
    const onConnect = (): void => {
      done();
      resolve();
    };
    function fail(err: Error): void {
      done();
      reject(new FailureError(`cannot connect to the broker at ${safeUrl(url)}: ${errorMessage(err)}`));
    }
    client.on('connect', onConnect);
    client.on('error', fail);
  });
}
