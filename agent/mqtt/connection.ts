import type { Duplex } from 'node:stream';
import { connect } from 'mqtt';
import type { IClientOptions, IPublishPacket, MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import { mutualTlsProblem, readBrokerFiles, safeUrl } from '../../lib/broker.js';
import { formatTime, topics } from '../../protocol/index.js';
import type { Status } from '../../protocol/index.js';
import { DEFAULT_MQTT_PACKET_BYTES, type AgentConfig } from '../config/schema.js';
import { EdgefleetError, errorMessage } from '../errors.js';
import { PacketSizeGuard, type RefusedPacket } from './packet-size-guard.js';

/**
 * The agent's one MQTT connection (docs/protocol.md section 7). MQTT 5 (or 3.1.1
 * with `mqtt.protocolVersion: 4`) with a persistent session (clientId =
 * device id, clean: false), so QoS 1 subscriptions and in-flight messages
 * survive reconnects; a retained last will marks the device offline when its
 * socket dies. Only MQTT 5 can ask for a session expiry; on 3.1.1 the broker
 * keeps the session as long as its own settings say. The agent keeps serving
 * without a broker: start() never fails for an unreachable broker, it waits a
 * bounded time and keeps retrying in the background with capped backoff.
 *
 * No packet from the broker larger than `mqtt.maxPacketBytes` is read whole:
 * MQTT 5 asks the broker not to send one (Maximum Packet Size), and on both
 * versions the bytes pass a guard (packet-size-guard.ts) that streams an
 * oversized packet away unparsed and logs it.
 */

/** The `mqtt` config section; protocolVersion (MQTT 5) and maxPacketBytes may be left out when built by hand. */
export type MqttConfig = Omit<NonNullable<AgentConfig['mqtt']>, 'protocolVersion' | 'maxPacketBytes'> & { protocolVersion?: 4 | 5; maxPacketBytes?: number };
export type MessageHandler = (topic: string, payload: Buffer, packet: IPublishPacket) => void;

export interface MqttConnectionOptions {
  config: MqttConfig;
  deviceId: string;
  logger: Logger;
  /** Called after every (re)connect, once the online status is on its way. */
  onConnect?: () => void;
  /** How long start() waits for the first connection before resolving anyway. */
  startWaitMs?: number;
  /** First reconnect delay; doubles per failed attempt up to maxBackoffMs. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Bound on stop(): offline status plus a clean DISCONNECT. */
  stopTimeoutMs?: number;
  /** How long the broker keeps the session (subscriptions, queued QoS 1) while the device is away; MQTT 5 only. */
  sessionExpiryS?: number;
}

export interface PublishOptions {
  retain?: boolean;
  qos?: 0 | 1;
}

const DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600;
const OFFLINE_WILL = Buffer.from(JSON.stringify({ online: false } satisfies Status));

/**
 * Reconnect delay before attempt `attempt` (0 = first retry): exponential,
 * capped, with "equal jitter" (half fixed, half random) so a fleet that lost
 * its broker together does not reconnect in lockstep.
 */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const exp = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.max(1, Math.round(exp / 2 + (random() * exp) / 2));
}

/** The config keys of the files, as errors name them. */
const FILE_KEYS = { ca: 'mqtt.ca', cert: 'mqtt.cert', key: 'mqtt.key', passwordFile: 'mqtt.passwordFile' } as const;

export class MqttConnection {
  readonly topicRoot: string;
  readonly statusTopic: string;
  private readonly opts: MqttConnectionOptions;
  private readonly log: Logger;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private mqtt: MqttClient | undefined;
  private attempt = 0;
  private offlineLogged = false;
  private stopped = false;
  private stopping: Promise<void> | undefined;
  private readonly messageHandlers = new Set<MessageHandler>();
  private readonly refusedListeners = new Set<(packet: RefusedPacket) => void>();
  private readonly connectListeners = new Set<() => void>();
  /** Publishes not yet acknowledged, rejected by stop() so no caller waits forever. */
  private readonly pending = new Set<(err: Error) => void>();

  constructor(options: MqttConnectionOptions) {
    this.opts = options;
    this.log = options.logger;
    this.topicRoot = options.config.topicRoot;
    this.statusTopic = topics.device(this.topicRoot, options.deviceId, 'status');
    this.initialBackoffMs = options.initialBackoffMs ?? 1000;
    this.maxBackoffMs = options.maxBackoffMs ?? 60_000;
    if (options.onConnect) this.connectListeners.add(options.onConnect);
  }

  get connected(): boolean {
    return this.mqtt?.connected ?? false;
  }

  /** The underlying mqtt.js client, for components that speak to it directly (e.g. the block puller). */
  get client(): MqttClient {
    if (!this.mqtt) throw new Error('MQTT connection is not started');
    return this.mqtt;
  }

  /**
   * Reads TLS material and the password (a missing file is an error naming it),
   * connects, and resolves once the first attempt has connected or failed, or
   * after startWaitMs, whichever is first. Nothing waits for the broker beyond
   * that: subscriptions and publishes made while offline go out on connect.
   */
  async start(): Promise<void> {
    if (this.mqtt) throw new Error('MQTT connection already started');
    const options = await this.clientOptions();
    // Not connected yet, so every stream, the first one included, goes through the guard.
    const client = connect(this.opts.config.url, { ...options, manualConnect: true });
    guardStreams(client, this.maxPacketBytes, (packet) => this.refused(packet));
    this.mqtt = client;
    this.attach(client);
    client.connect();
    this.log.info({ url: safeUrl(this.opts.config.url), clientId: this.opts.deviceId, protocolVersion: options.protocolVersion, maxPacketBytes: this.maxPacketBytes }, 'connecting to MQTT broker');
    const waitMs = this.opts.startWaitMs ?? 5000;
    const since = Date.now();
    // The first attempt's outcome, bounded: a refused or unreachable broker ends the wait at once.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        client.off('connect', done);
        client.off('close', done);
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      client.on('connect', done);
      client.on('close', done);
    });
    if (!client.connected) this.log.warn({ waitedMs: Date.now() - since }, 'MQTT broker not reachable yet; serving offline, retrying in the background');
  }

  private async clientOptions(): Promise<IClientOptions> {
    const { config, deviceId } = this.opts;
    const unpaired = mutualTlsProblem(config, FILE_KEYS);
    if (unpaired !== undefined) throw new EdgefleetError('CONFIG', unpaired);
    const secrets = await readBrokerFiles(config, {
      names: FILE_KEYS,
      error: (message, cause) => new EdgefleetError('CONFIG', message, { cause }),
    });
    const protocolVersion = config.protocolVersion ?? 5;
    const options: IClientOptions = {
      protocolVersion,
      clientId: deviceId,
      clean: false,
      // MQTT 3.1.1 has no properties: a v4 CONNECT carrying them is malformed. On MQTT 5 the broker
      // must not send a packet over maximumPacketSize (Mosquitto drops it). mqtt-packet also applies
      // it to what the agent sends; the schema keeps it above the telemetry batch size for that.
      ...(protocolVersion === 5 && {
        properties: { sessionExpiryInterval: this.opts.sessionExpiryS ?? DEFAULT_SESSION_EXPIRY_S, maximumPacketSize: this.maxPacketBytes },
      }),
      keepalive: config.keepaliveS,
      connectTimeout: 10_000,
      reconnectPeriod: backoffDelay(0, this.initialBackoffMs, this.maxBackoffMs),
      // A refused CONNACK (e.g. not authorised yet) may be fixed on the broker side: keep trying.
      reconnectOnConnackError: true,
      resubscribe: true,
      will: { topic: this.statusTopic, payload: OFFLINE_WILL, qos: 1, retain: true },
      ...secrets,
    };
    if (config.username !== undefined) options.username = config.username;
    return options;
  }

  private attach(client: MqttClient): void {
    client.on('connect', (connack) => {
      this.attempt = 0;
      // mqtt.js arms its reconnect timer from options.reconnectPeriod on each close; reset it after success.
      client.options.reconnectPeriod = backoffDelay(0, this.initialBackoffMs, this.maxBackoffMs);
      this.offlineLogged = false;
      this.log.info({ sessionPresent: connack.sessionPresent }, 'MQTT connected');
      this.publishJson(this.statusTopic, { online: true, ts: formatTime() } satisfies Status, { retain: true }).catch((err: unknown) =>
        this.log.warn({ err: errorMessage(err) }, 'could not publish online status'),
      );
      for (const listener of this.connectListeners) this.safely('connect listener', () => listener());
    });
    client.on('reconnect', () => {
      // The next close arms the timer with this delay: the capped exponential backoff.
      this.attempt += 1;
      client.options.reconnectPeriod = backoffDelay(this.attempt, this.initialBackoffMs, this.maxBackoffMs);
    });
    client.on('offline', () => {
      if (!this.offlineLogged) this.log.warn('MQTT connection lost; retrying with backoff');
      this.offlineLogged = true;
    });
    client.on('error', (err) => {
      // Logged once per outage at warn, repeats at debug, so a long outage does not flood the journal.
      const level = this.offlineLogged ? 'debug' : 'warn';
      this.log[level]({ err: err.message, attempt: this.attempt }, 'MQTT connection error');
    });
    client.on('message', (topic, payload, packet) => {
      for (const handler of this.messageHandlers) this.safely('message handler', () => handler(topic, payload, packet));
    });
  }

  private get maxPacketBytes(): number {
    return this.opts.config.maxPacketBytes ?? DEFAULT_MQTT_PACKET_BYTES;
  }

  private refused(packet: RefusedPacket): void {
    const { topic, bytes, limit, qos } = packet;
    const what = topic === undefined ? `an MQTT packet of type ${packet.type}` : `the message on ${topic}`;
    this.log.error(
      { topic, bytes, limit, qos, type: packet.type },
      `refused ${what}: ${bytes} bytes is over the limit of ${limit} (mqtt.maxPacketBytes); it was dropped unread. Raise mqtt.maxPacketBytes to accept it`,
    );
    for (const listener of this.refusedListeners) this.safely('refused-packet listener', () => listener(packet));
  }

  private safely(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.error({ err: errorMessage(err) }, `${what} threw`);
    }
  }

  /** Registers a handler for every incoming message; returns its removal. */
  onMessage(handler: MessageHandler): () => void {
    this.messageHandlers.add(handler);
    return () => this.messageHandlers.delete(handler);
  }

  /** Registers a listener for every incoming packet dropped unread for its size; returns its removal. */
  onRefused(listener: (packet: RefusedPacket) => void): () => void {
    this.refusedListeners.add(listener);
    return () => this.refusedListeners.delete(listener);
  }

  /** Registers a listener called after every (re)connect; returns its removal. */
  onConnect(listener: () => void): () => void {
    this.connectListeners.add(listener);
    return () => this.connectListeners.delete(listener);
  }

  /**
   * Publishes `value` as JSON. Resolves on PUBACK (QoS 1); while offline
   * mqtt.js keeps the message and sends it after reconnecting.
   */
  publishJson(topic: string, value: unknown, options: PublishOptions = {}): Promise<void> {
    return this.publish(topic, JSON.stringify(value), options);
  }

  publish(topic: string, payload: string | Buffer, { retain = false, qos = 1 }: PublishOptions = {}): Promise<void> {
    if (this.stopped) return Promise.reject(new Error(`cannot publish to ${topic}: MQTT connection is stopped`));
    const client = this.client;
    return new Promise<void>((resolve, reject) => {
      const fail = (err: Error): void => reject(err);
      this.pending.add(fail);
      client.publish(topic, payload, { qos, retain }, (err) => {
        this.pending.delete(fail);
        if (err) reject(new Error(`publish to ${topic} failed: ${err.message}`, { cause: err }));
        else resolve();
      });
    });
  }

  /**
   * Subscribes with QoS 1; resolves on SUBACK. A subscription cut off by a
   * lost connection is asked again after the next connect. Offline, mqtt.js
   * holds the SUBSCRIBE until the broker connects, so no start() may await it.
   */
  async subscribe(topicList: string | readonly string[]): Promise<void> {
    const list = typeof topicList === 'string' ? [topicList] : [...topicList];
    for (;;) {
      const client = this.client;
      try {
        const granted = await client.subscribeAsync(list, { qos: 1 });
        const refused = granted.filter((g) => g.qos >= 0x80);
        if (refused.length > 0) {
          const detail = refused.map((g) => `${g.topic} (reason code ${g.qos})`).join(', ');
          throw new Error(`broker refused subscription to ${detail}`);
        }
        return;
      } catch (err) {
        // mqtt.js fails SUBSCRIBEs in flight with this message when the socket drops.
        if (this.stopped || errorMessage(err) !== 'Connection closed') throw err;
        await this.nextConnect();
      }
    }
  }

  async unsubscribe(topicList: string | readonly string[]): Promise<void> {
    await this.client.unsubscribeAsync(typeof topicList === 'string' ? topicList : [...topicList]);
  }

  private nextConnect(): Promise<void> {
    return new Promise((resolve) => {
      const remove = this.onConnect(() => {
        remove();
        resolve();
      });
    });
  }

  /**
   * Publishes the retained offline status (when connected) and disconnects
   * cleanly, so the broker drops the will; bounded by stopTimeoutMs, after
   * which the socket is closed hard.
   */
  stop(): Promise<void> {
    this.stopping ??= this.disconnect();
    return this.stopping;
  }

  private async disconnect(): Promise<void> {
    const client = this.mqtt;
    if (!client) return;
    const deadline = Date.now() + (this.opts.stopTimeoutMs ?? 3000);
    if (client.connected) {
      const offline = this.publishJson(this.statusTopic, { online: false, ts: formatTime() } satisfies Status, { retain: true });
      await withTimeout(offline, deadline - Date.now()).catch((err: unknown) =>
        this.log.warn({ err: errorMessage(err) }, 'could not publish offline status'),
      );
    }
    this.stopped = true;
    const ended = await withTimeout(client.endAsync(!client.connected), deadline - Date.now()).then(
      () => true,
      () => false,
    );
    if (!ended) await client.endAsync(true).catch(() => undefined);
    for (const fail of this.pending) fail(new Error('MQTT connection stopped before the broker acknowledged the message'));
    this.pending.clear();
    this.log.info('MQTT disconnected');
  }
}

/**
 * Puts a PacketSizeGuard between every stream mqtt.js opens (one per connect)
 * and its parser. mqtt.js has no option for it; its client builds each stream
 * through the `streamBuilder` it was constructed with, so that is wrapped.
 */
function guardStreams(client: MqttClient, limit: number, onRefused: (packet: RefusedPacket) => void): void {
  const holder = client as unknown as { streamBuilder?: (client: MqttClient) => Duplex };
  const build = holder.streamBuilder;
  if (typeof build !== 'function') throw new Error('this mqtt.js has no streamBuilder to wrap: agent/mqtt/packet-size-guard.ts needs updating for it');
  holder.streamBuilder = (c) => new PacketSizeGuard(build.call(client, c), limit, onRefused);
}

/** Rejects when `promise` has not settled within `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), Math.max(0, ms));
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
