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
import { parseEvent, parseReportedState, parseStatus, parseTelemetryBatch, parseTopic, topics } from '../../protocol/index.js';
import { FailureError, errorMessage } from '../errors.js';
import type { BrokerSettings, MqttProtocolVersion } from '../mqtt.js';
import type { FleetStore } from './store.js';

/** PUBACK reason codes (MQTT 5, 3.4.2.1). */
const SUCCESS = 0x00;
const PAYLOAD_FORMAT_INVALID = 0x99;
const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9e;

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
  log: Logger;
}

export interface CollectorStats {
  batches: number;
  points: number;
  duplicates: number;
  events: number;
  statuses: number;
  states: number;
  /** Messages acknowledged without storing: not valid per docs/protocol.md section 7. */
  rejected: number;
  /** Subscriptions made: the first, and one after each reconnect to a restored session. */
  subscribes: number;
}

type DeviceTopic = Extract<ParsedTopic, { kind: 'status' | 'state' | 'events' | 'telemetry' }>;

export class Collector {
  readonly stats: CollectorStats = { batches: 0, points: 0, duplicates: 0, events: 0, statuses: 0, states: 0, rejected: 0, subscribes: 0 };
  private client: MqttClient | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;
  private pruning: Promise<void> | undefined;
  private dropping = false;

  constructor(private readonly options: CollectorOptions) {}

  get protocolVersion(): MqttProtocolVersion {
    return this.options.broker.protocolVersion ?? 5;
  }

  /**
   * The subscriptions, by filter: shared for telemetry and events, plain for
   * the retained channels. MQTT 3.1.1 has no shared subscriptions: all plain.
   */
  subscriptions(): ISubscriptionMap {
    const root = this.options.broker.topicRoot;
    const shared = (filter: string): string => (this.protocolVersion === 5 ? `$share/${this.options.shareGroup}/${filter}` : filter);
    return {
      [shared(topics.allDevices(root, 'telemetry'))]: { qos: 1 },
      [shared(topics.allDevices(root, 'events'))]: { qos: 1 },
      [topics.allDevices(root, 'status')]: { qos: 1 },
      [topics.allDevices(root, 'state')]: { qos: 1 },
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
      this.dropping = false;
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
    } catch (err) {
      await client.endAsync(true);
      throw err;
    }
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
    await this.pruning;
    await this.client?.endAsync();
    this.client = undefined;
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

  private storeFailed(topic: string, err: unknown): void {
    this.options.log.error({ topic, err: errorMessage(err) }, 'could not store a message; it stays unacknowledged and comes again after a reconnect');
    this.redeliver();
  }

  /** Unacknowledged messages are sent again only on a new connection (MQTT 5 and 3.1.1, 4.4). */
  private redeliver(): void {
    if (this.dropping || this.client === undefined) return;
    this.dropping = true;
    this.client.stream.destroy();
  }

  /** Stores one message; resolves to the PUBACK reason code, rejects when the store failed. */
  private async handle(topic: string, payload: Buffer): Promise<number> {
    const parsed = parseTopic(this.options.broker.topicRoot, topic);
    // Not a device channel (or an empty retained message, which deletes one): nothing to store.
    if (parsed === undefined || !('deviceId' in parsed) || parsed.kind === 'telemetry-ack' || payload.length === 0) return SUCCESS;
    let write: () => Promise<void>;
    try {
      write = this.writer(parsed, payload);
    } catch (err) {
      this.stats.rejected += 1;
      this.options.log.warn({ topic, err: errorMessage(err) }, 'ignoring a message that is not valid');
      return PAYLOAD_FORMAT_INVALID;
    }
    await write();
    return SUCCESS;
  }

  /** Parses a message (throwing when it is invalid) into the write that stores it. */
  private writer(topic: DeviceTopic, payload: Buffer): () => Promise<void> {
    const { store } = this.options;
    const device = topic.deviceId;
    const stats = this.stats;
    const kind = topic.kind;
    switch (kind) {
      case 'telemetry': {
        const batch = parseTelemetryBatch(payload);
        if (batch.device !== device) throw new Error(`telemetry batch names device "${batch.device}"`);
        return async () => {
          const added = await store.insertPoints(device, batch.points);
          stats.batches += 1;
          stats.points += added;
          stats.duplicates += batch.points.length - added;
        };
      }
      case 'events': {
        const event = parseEvent(payload);
        return async () => {
          if (await store.insertEvent(device, event)) stats.events += 1;
        };
      }
      case 'status': {
        const status = parseStatus(payload);
        return async () => {
          await store.upsertStatus(device, status, Date.now());
          stats.statuses += 1;
        };
      }
      case 'state': {
        const state = parseReportedState(payload);
        if (state.device !== device) throw new Error(`reported state names device "${state.device}"`);
        return async () => {
          await store.upsertState(state, Date.now());
          stats.states += 1;
        };
      }
      default: {
        const never: never = kind;
        throw new Error(`unexpected channel ${String(never)}`);
      }
    }
  }
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
