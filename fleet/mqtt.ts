/**
 * The fleet tools' MQTT connection: MQTT 5 (or 3.1.1 with --mqtt-version 4,
 * for brokers such as aedes that lack MQTT 5), clean session, no automatic
 * reconnect (a CLI run either finishes or says why it could not), QoS 1 for
 * everything it publishes, and a bounded number of messages in flight.
 */
import { randomBytes } from 'node:crypto';
import { ReasonCodes, connect } from 'mqtt';
import type { IClientOptions, IConnackPacket, MqttClient } from 'mqtt';
import { isBrokerUrl, mutualTlsProblem, readBrokerFiles, safeUrl } from '../lib/broker.js';
import { DEFAULT_TOPIC_ROOT, checkTopicRoot } from '../protocol/index.js';
import { renamedOption } from './args.js';
import { FailureError, UsageError, errorMessage } from './errors.js';
import type { Profile } from './profile.js';
import { PROFILE_HELP, PROFILE_OPTIONS, loadProfile, settingName } from './profile.js';

const CONNECT_TIMEOUT_MS = 10_000;
const CLOSE_TIMEOUT_MS = 5_000;

/** parseArgs options every broker command takes. */
export const BROKER_OPTIONS = {
  broker: { type: 'string' },
  'topic-root': { type: 'string' },
  ca: { type: 'string' },
  'client-cert': { type: 'string' },
  'client-key': { type: 'string' },
  // The old names of --client-cert and --client-key: --key-file was too easily taken for a signing key.
  cert: { type: 'string' },
  'key-file': { type: 'string' },
  username: { type: 'string' },
  'password-file': { type: 'string' },
  'mqtt-version': { type: 'string' },
  ...PROFILE_OPTIONS,
} as const;

/** MQTT protocol levels the tools speak: 5 (MQTT 5) and 4 (MQTT 3.1.1). */
export type MqttProtocolVersion = 4 | 5;

export const BROKER_HELP = `Broker options (each may come from a profile instead):
  --broker URL            mqtt://, mqtts://, ws:// or wss:// URL
                          (default: the profile's, else $EDGEFLEET_BROKER)
  --topic-root R          topic root (default ${DEFAULT_TOPIC_ROOT})
  --ca FILE               CA certificate (PEM) to verify the broker
  --client-cert FILE      TLS client certificate (PEM) for mutual TLS (was --cert)
  --client-key FILE       TLS client private key (PEM) for mutual TLS (was --key-file)
  --username NAME         MQTT user name
  --password-file FILE    file whose first line is the MQTT password
  --mqtt-version 4|5      MQTT 5 (default) or 4 for MQTT 3.1.1 brokers
${PROFILE_HELP}`;

export interface BrokerSettings {
  url: string;
  topicRoot: string;
  tls: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  username?: string;
  password?: Buffer;
  /** Absent: 5. */
  protocolVersion?: MqttProtocolVersion;
}

type BrokerValues = { [K in keyof typeof BROKER_OPTIONS]?: string | undefined };

const stderrWarn = (line: string): void => void process.stderr.write(`${line}\n`);

/**
 * Validates the broker options and reads the files they name. Each setting is
 * the flag's, else the profile's (`--profile`, $EDGEFLEET_PROFILE; loaded here
 * unless given), else the default. `warn` gets deprecation notes.
 */
export async function brokerSettings(
  values: BrokerValues, opts: { profile?: Profile; warn?: (line: string) => void } = {},
): Promise<BrokerSettings> {
  const warn = opts.warn ?? stderrWarn;
  const profile = opts.profile ?? (await loadProfile(values.profile));
  const p = profile.settings;
  const url = values.broker ?? p.broker ?? (process.env.EDGEFLEET_BROKER || undefined);
  if (url === undefined || url === '') throw new UsageError('missing --broker URL (or set EDGEFLEET_BROKER, or "broker" in a profile)');
  if (!isBrokerUrl(url)) {
    throw new UsageError(`--broker must be a URL such as mqtt://host:1883 or mqtts://host:8883, got "${safeUrl(url)}"`);
  }
  const topicRoot = values['topic-root'] ?? p.topicRoot ?? DEFAULT_TOPIC_ROOT;
  try {
    checkTopicRoot(topicRoot);
  } catch (err) {
    throw new UsageError(`--topic-root: ${errorMessage(err)}`);
  }
  const version = values['mqtt-version'] ?? (p.mqttVersion === undefined ? undefined : String(p.mqttVersion));
  if (version !== undefined && version !== '4' && version !== '5') {
    throw new UsageError(`--mqtt-version must be 5 (MQTT 5) or 4 (MQTT 3.1.1), got "${version}"`);
  }
  const flagged = {
    ca: values.ca,
    cert: renamedOption<string>(values, 'client-cert', 'cert', warn),
    key: renamedOption<string>(values, 'client-key', 'key-file', warn),
    passwordFile: values['password-file'],
  };
  const files = {
    ca: flagged.ca ?? p.ca,
    cert: flagged.cert ?? p.clientCert,
    key: flagged.key ?? p.clientKey,
    passwordFile: flagged.passwordFile ?? p.passwordFile,
  };
  const named = (key: keyof typeof files, flag: string, field: string): string => (flagged[key] !== undefined ? `--${flag}` : settingName(profile, flag, field));
  const names = {
    ca: named('ca', 'ca', 'ca'),
    cert: named('cert', 'client-cert', 'clientCert'),
    key: named('key', 'client-key', 'clientKey'),
    passwordFile: named('passwordFile', 'password-file', 'passwordFile'),
  };
  const unpaired = mutualTlsProblem(files, names);
  if (unpaired !== undefined) throw new UsageError(unpaired);
  const { password, ...tls } = await readBrokerFiles(files, { names, error: (message) => new FailureError(message) });
  const username = values.username ?? p.username;
  return {
    url,
    topicRoot,
    tls,
    ...(username !== undefined && { username }),
    ...(password !== undefined && { password }),
    ...(version !== undefined && { protocolVersion: Number(version) as MqttProtocolVersion }),
  };
}

/** What the broker announced in its CONNACK (MQTT 5; nothing on 3.1.1). */
export interface BrokerLimits {
  maximumPacketSize?: number;
  receiveMaximum?: number;
}

export interface OutMessage {
  topic: string;
  payload: Buffer;
}

/** A connected client and the few operations the commands need. */
export class Broker {
  private ending = false;
  private closed = false;
  private lastProblem = '';
  /** Rejects when the connection drops before close(): pending operations fail instead of hanging. */
  private readonly lost: Promise<never>;

  constructor(
    private readonly client: MqttClient,
    readonly settings: BrokerSettings,
    readonly limits: BrokerLimits = {},
  ) {
    client.on('error', (err) => (this.lastProblem = err.message));
    client.on('disconnect', (packet) => {
      const code = packet.reasonCode ?? 0;
      this.lastProblem = `the broker disconnected us: ${ReasonCodes[code as keyof typeof ReasonCodes] ?? 'no reason given'} (reason code ${code})`;
    });
    this.lost = new Promise<never>((_, reject) => {
      client.on('close', () => {
        this.closed = true;
        if (!this.ending) reject(new FailureError(`lost the connection to ${safeUrl(settings.url)}${this.lastProblem ? `: ${this.lastProblem}` : ''}`));
      });
    });
    this.lost.catch(() => undefined); // observed through guard()
  }

  get topicRoot(): string {
    return this.settings.topicRoot;
  }

  private guard<T>(op: Promise<T>): Promise<T> {
    return Promise.race([op, this.lost]);
  }

  /** QoS 1; resolves when the broker has acknowledged it. */
  async publish(topic: string, payload: Buffer, retain: boolean): Promise<void> {
    try {
      await this.guard(this.client.publishAsync(topic, payload, { qos: 1, retain }));
    } catch (err) {
      if (err instanceof FailureError) throw err;
      throw new FailureError(`broker refused the message on ${topic}: ${errorMessage(err)}`);
    }
  }

  /** Publishes every message retained, at most `maxInFlight` unacknowledged at a time. */
  async publishAllRetained(messages: readonly OutMessage[], maxInFlight: number, onAcked?: (acked: number) => void): Promise<void> {
    // MQTT 5: never more unacknowledged QoS 1 messages than the broker's Receive Maximum.
    const limit = Math.max(1, Math.min(maxInFlight, this.limits.receiveMaximum ?? maxInFlight));
    let next = 0;
    let acked = 0;
    let failed = false;
    const worker = async (): Promise<void> => {
      while (!failed && next < messages.length) {
        const msg = messages[next++] as OutMessage;
        try {
          await this.publish(msg.topic, msg.payload, true);
        } catch (err) {
          failed = true;
          throw err;
        }
        onAcked?.(++acked);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, messages.length) }, worker));
  }

  /**
   * Subscribes to `filters` and collects the retained messages the broker
   * replays (non-empty ones only; an empty retained message is a deletion).
   * Stops when `complete` says so, after `quietMs` without a message, or after `maxMs`.
   */
  async collectRetained(
    filters: readonly string[],
    opts: { quietMs: number; maxMs?: number; complete?: (got: ReadonlyMap<string, Buffer>) => boolean },
  ): Promise<Map<string, Buffer>> {
    const got = new Map<string, Buffer>();
    let poke = (): void => undefined;
    const onMessage = (topic: string, payload: Buffer, packet: { retain?: boolean }): void => {
      if (!packet.retain || payload.length === 0 || !filters.some((f) => topicMatches(f, topic))) return;
      got.set(topic, payload);
      poke();
    };
    this.client.on('message', onMessage);
    try {
      const grants = await this.guard(this.client.subscribeAsync([...filters], { qos: 1 }));
      const refused = grants.filter((g) => g.qos >= 0x80).map((g) => g.topic);
      if (refused.length > 0) throw new FailureError(`broker refused the subscription to ${refused.join(', ')} (not authorized?)`);
      await this.guard(waitQuiet(opts, got, (fn) => (poke = fn)));
      await this.guard(this.client.unsubscribeAsync([...filters]));
    } finally {
      this.client.removeListener('message', onMessage);
    }
    return got;
  }

  /** Disconnects cleanly; a connection the broker already dropped is just let go. */
  async close(): Promise<void> {
    this.ending = true;
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      // end() may never call back on a half-dead socket; do not let that hang the CLI.
      const timer = setTimeout(() => {
        this.client.end(true);
        resolve();
      }, CLOSE_TIMEOUT_MS);
      timer.unref();
      this.client.end(false, {}, () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function waitQuiet(
  opts: { quietMs: number; maxMs?: number; complete?: (got: ReadonlyMap<string, Buffer>) => boolean },
  got: ReadonlyMap<string, Buffer>,
  setPoke: (fn: () => void) => void,
): Promise<void> {
  return new Promise<void>((resolve) => {
    let quiet: NodeJS.Timeout | undefined;
    const finish = (): void => {
      clearTimeout(quiet);
      clearTimeout(cap);
      resolve();
    };
    const cap = setTimeout(finish, opts.maxMs ?? opts.quietMs);
    const poke = (): void => {
      if (opts.complete?.(got)) return finish();
      clearTimeout(quiet);
      quiet = setTimeout(finish, opts.quietMs);
    };
    setPoke(poke);
    poke();
  });
}

/** MQTT topic filter matching with '+' and a trailing '#'. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

/** Connects, or fails with "cannot reach broker at URL: why". */
export async function connectBroker(settings: BrokerSettings): Promise<Broker> {
  const options: IClientOptions = {
    protocolVersion: settings.protocolVersion ?? 5,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: CONNECT_TIMEOUT_MS,
    clientId: `edgefleet-cli-${randomBytes(6).toString('hex')}`,
    ...settings.tls,
    ...(settings.username !== undefined && { username: settings.username }),
    ...(settings.password !== undefined && { password: settings.password }),
  };
  const client = connect(settings.url, options);
  try {
    const connack = await new Promise<IConnackPacket>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        reject(err);
      };
      client.once('connect', (packet) => {
        clearTimeout(timer);
        resolve(packet);
      });
      client.once('error', fail);
      client.once('close', () => fail(new Error('connection closed')));
    });
    const { maximumPacketSize, receiveMaximum } = connack.properties ?? {};
    return new Broker(client, settings, {
      ...(maximumPacketSize !== undefined && { maximumPacketSize }),
      ...(receiveMaximum !== undefined && { receiveMaximum }),
    });
  } catch (err) {
    client.end(true);
    throw new FailureError(`cannot reach broker at ${safeUrl(settings.url)}: ${socketProblem(err)}`);
  }
}

/** Node reports a refused "localhost" (tried over IPv6 and IPv4) as an AggregateError with an empty message. */
function socketProblem(err: unknown): string {
  if (err instanceof AggregateError && err.message === '') {
    return err.errors.map((e) => errorMessage(e)).join('; ') || 'connection failed';
  }
  const code = (err as { code?: unknown }).code;
  return errorMessage(err) || (typeof code === 'string' ? code : 'connection failed');
}

/** Runs `fn` with a connected broker and always disconnects afterwards. */
export async function withBroker<T>(settings: BrokerSettings, fn: (broker: Broker) => Promise<T>): Promise<T> {
  const broker = await connectBroker(settings);
  try {
    return await fn(broker);
  } finally {
    await broker.close();
  }
}
