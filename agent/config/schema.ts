import { isIP } from 'node:net';
import cron from 'node-cron';
import { z } from 'zod';
import { isBrokerUrl } from '../../lib/broker.js';
import { DEFAULT_TOPIC_ROOT, DEVICE_ID_RE, GROUP_RE, LABEL_RE, MODEL_NAME_RE, TOPIC_ROOT_RE } from '../../protocol/names.js';

/**
 * The one schema for the agent's configuration file (PROTOCOL.md section 9 plus
 * the agent's own tuning keys). It gives the TypeScript type, the validation and
 * the defaults. Objects are strict: an unknown key is an error, never ignored.
 */

/** A string matching one of the protocol's name patterns; the message quotes the pattern. */
const named = (re: RegExp, what = 'must'): z.ZodString => z.string().regex(re, `${what} match ${re.source}`);
const VERSION = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

export const EXECUTION_PROVIDERS = ['tensorrt', 'cuda', 'xnnpack', 'webgpu', 'cpu'] as const;
export type ExecutionProviderName = (typeof EXECUTION_PROVIDERS)[number];

/** TensorFlow Serving's model_version_policy. */
export const versionPolicySchema = z.union([
  z.strictObject({ latest: z.strictObject({ numVersions: z.number().int().min(1).default(1) }) }),
  z.strictObject({ all: z.strictObject({}) }),
  z.strictObject({ specific: z.strictObject({ versions: z.array(VERSION).min(1) }) }),
]);
export type VersionPolicy = z.infer<typeof versionPolicySchema>;

export const batchingSchema = z.strictObject({
  maxBatchSize: z.number().int().min(1).max(4096),
  maxQueueDelayMs: z.number().min(0).max(1000),
  /** Requests waiting beyond this are answered 503 at once. */
  maxQueueSize: z.number().int().min(1).default(1024),
});
export type BatchingConfig = z.infer<typeof batchingSchema>;

const modelOptionsSchema = z.strictObject({
  versionPolicy: versionPolicySchema.optional(),
  /** label → version, as TensorFlow Serving's version_labels. */
  labels: z.record(named(LABEL_RE, 'labels must'), VERSION).default({}),
  batching: batchingSchema.optional(),
});
export type ModelOptions = z.infer<typeof modelOptionsSchema>;

const path = z.string().min(1);

/** A DNS name: dot-separated labels of letters, digits and inner hyphens (RFC 1123). */
const HOST_NAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
/** An address to listen on: an IP address or a host name, with no scheme or port around it. */
const listenHost = z
  .string()
  .refine((s) => isIP(s) !== 0 || HOST_NAME_RE.test(s), 'must be an IP address or a host name, such as "0.0.0.0", "::" or "localhost", without a scheme or port');

/** Room for a PUBLISH's topic, packet id and properties besides its payload. */
export const MQTT_PACKET_HEADROOM = 64 * 1024;
/** 1 MiB of payload (a desired or trust document) plus headroom; far above the largest artifact block (128 KiB). */
export const DEFAULT_MQTT_PACKET_BYTES = 1024 * 1024 + MQTT_PACKET_HEADROOM;
/** The largest artifact block (docs/protocol.md section 4) plus headroom: blocks must always fit. */
const MIN_MQTT_PACKET_BYTES = 128 * 1024 + MQTT_PACKET_HEADROOM;
/** The largest packet MQTT can frame: 5 bytes of fixed header and 268,435,455 of remaining length. */
const MAX_MQTT_PACKET_BYTES = 268_435_460;

export const configSchema = z.strictObject({
  deviceId: named(DEVICE_ID_RE),
  groups: z.array(named(GROUP_RE)).default([]),
  stateDir: path.default('/var/lib/edgefleet'),
  trust: path.optional(),
  mqtt: z
    .strictObject({
      url: z.string().refine(isBrokerUrl, 'must be an mqtt://, mqtts://, ws:// or wss:// URL'),
      topicRoot: z.string().regex(TOPIC_ROOT_RE, "must be a topic prefix of non-empty levels without '+' or '#'").default(DEFAULT_TOPIC_ROOT),
      ca: path.optional(),
      cert: path.optional(),
      key: path.optional(),
      username: z.string().optional(),
      passwordFile: path.optional(),
      keepaliveS: z.number().int().min(5).max(3600).default(30),
      /**
       * 5 (MQTT 5) or 4 (MQTT 3.1.1, for brokers without MQTT 5 such as aedes):
       * 3.1.1 has no session expiry, so the broker keeps the session as long as its own settings say.
       */
      protocolVersion: z.literal([4, 5]).default(5),
      /**
       * Largest packet taken from the broker, whole (MQTT 5's Maximum Packet Size). A larger
       * one (a retained desired, group or trust document) is dropped unread and logged.
       */
      maxPacketBytes: z.number().int().min(MIN_MQTT_PACKET_BYTES).max(MAX_MQTT_PACKET_BYTES).default(DEFAULT_MQTT_PACKET_BYTES),
    })
    .optional(),
  http: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(8501),
      bodyLimitBytes: z.number().int().min(1024).default(64 * 1024 * 1024),
      /** Requests in flight beyond this are answered 503. */
      maxInFlight: z.number().int().min(1).default(1024),
      /**
       * Open connections; at the cap a new one closes the longest idle connection (or one
       * stuck sending its head), else gets 503. systemd/edgefleet-agent.service's LimitNOFILE
       * leaves room for the default.
       */
      maxConnections: z.number().int().min(1).max(1_000_000).default(1024),
    })
    .prefault({}),
  /**
   * The gRPC API (PROTOCOL.md section 8, revision 2): TensorFlow Serving's and KServe v2's
   * services. Off unless the key is present; `"grpc": {}` serves on 127.0.0.1:8500.
   */
  grpc: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      /** null: no TCP listener (then `socket` must be set). */
      port: z.number().int().min(0).max(65535).nullable().default(8500),
      /** A Unix socket to listen on as well (or only, with `port` null). */
      socket: path.optional(),
      /** Largest request message; larger ones get RESOURCE_EXHAUSTED. */
      maxMessageBytes: z.number().int().min(1024).max(2 ** 31 - 1).default(64 * 1024 * 1024),
      /** Calls in flight beyond this get UNAVAILABLE. */
      maxInFlight: z.number().int().min(1).default(1024),
    })
    .refine((g) => g.port !== null || g.socket !== undefined, { message: 'with "port": null, "socket" must be set (the gRPC API needs somewhere to listen)', path: ['port'] })
    .optional(),
  /**
   * A listener of its own for Prometheus (GET /metrics and /monitoring/prometheus/metrics,
   * nothing else), so a central Prometheus can scrape a board without reaching the
   * inference API. Off unless the key is present; /metrics stays on the HTTP API either way.
   */
  metrics: z
    .strictObject({
      host: listenHost.default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(8502),
    })
    .optional(),
  /** TLS and bearer tokens for the local APIs (HTTP and gRPC); each off unless set. Reloaded on SIGHUP. */
  api: z
    .strictObject({
      /** Serve HTTPS and gRPC over TLS with this certificate chain and key (PEM files). */
      tls: z.strictObject({ cert: path, key: path }).optional(),
      /** A file of SHA-256 digests of the bearer tokens that may call the APIs (GET /v2/health/* stays open). */
      tokensFile: path.optional(),
    })
    .prefault({}),
  models: z
    .strictObject({
      dir: path.optional(),
      /** How often models.dir is rescanned, besides fs.watch events. */
      pollIntervalMs: z.number().int().min(100).default(2000),
      /** A file must keep its size and mtime this long before it is loaded. */
      settleMs: z.number().int().min(0).default(1000),
      versionPolicy: versionPolicySchema.default({ latest: { numVersions: 1 } }),
      config: z.record(named(MODEL_NAME_RE, 'model names must'), modelOptionsSchema).default({}),
    })
    .prefault({}),
  runtime: z
    .strictObject({
      executionProviders: z.array(z.enum(EXECUTION_PROVIDERS)).min(1).default(['tensorrt', 'cuda', 'xnnpack', 'cpu']),
      intraOpNumThreads: z.number().int().min(0).default(0),
      interOpNumThreads: z.number().int().min(0).default(0),
      graphOptimizationLevel: z.enum(['disabled', 'basic', 'extended', 'all']).default('all'),
      warmupRuns: z.number().int().min(0).max(100).default(2),
      /**
       * ONNX Runtime's own native log level. Its errors all reach the agent as
       * exceptions, logged with context, so by default only fatal ones print raw.
       */
      ortLogLevel: z.enum(['verbose', 'info', 'warning', 'error', 'fatal']).default('fatal'),
      /**
       * An onnxruntime-node build folder to load instead of the bundled CPU build (a
       * Jetson's CUDA/TensorRT build); checked at start (agent/runtime/ort-build.ts).
       */
      onnxruntimePath: path.optional(),
    })
    .prefault({}),
  rollout: z
    .strictObject({
      /** Block topics subscribed at once during a pull. */
      window: z.number().int().min(1).max(256).default(8),
      /** A block not received in this time is asked for again, with backoff. */
      blockTimeoutMs: z.number().int().min(100).default(10_000),
      /** A pull that makes no progress this long fails (the artifact is missing). */
      giveUpAfterS: z.number().int().min(1).default(600),
      /** After a switch, how long the new version is watched before the old one is unloaded. */
      healthWindowS: z.number().min(0).default(30),
      /** Roll back when at least this many runs failed in the window... */
      healthMinFailures: z.number().int().min(1).default(3),
      /** ...and they are more than this share of the window's runs. */
      healthMaxFailureRate: z.number().min(0).max(1).default(0.2),
      /** Retryable failures (artifact missing, load error) are retried this often, with capped backoff; no space is retried until there is room, without using up attempts. */
      maxAttempts: z.number().int().min(1).default(5),
      retryBaseMs: z.number().int().min(10).default(2_000),
      retryMaxMs: z.number().int().min(10).default(300_000),
    })
    .prefault({}),
  telemetry: z
    .strictObject({
      /** Seconds between inference points (one per model version with requests). */
      intervalS: z.number().min(1).max(3600).default(10),
      health: z
        .strictObject({
          /** node-cron expression; with six fields the first is seconds. */
          schedule: z
            .string()
            .refine((s) => cron.validate(s), 'must be a cron expression, e.g. "*/30 * * * * *" (every 30 s)')
            .default('*/30 * * * * *'),
          /** Bound on each source (systeminformation, nvidia-smi, sysfs) per sample. */
          timeoutMs: z.number().int().min(100).max(60_000).default(5_000),
        })
        .prefault({}),
      /**
       * Who acknowledges a point so that it leaves the outbox (PROTOCOL.md section 12): `broker`
       * (its PUBACK, section 7) or `collector` (its retained telemetry ack; points are sent again
       * until then). `broker` by default: a collector from before revision 2 never acknowledges.
       */
      delivery: z.enum(['broker', 'collector'], 'must be "broker" (deleted on the broker\'s PUBACK) or "collector" (kept until a collector acknowledges them)').default('broker'),
      /** With delivery `collector`: points sent this long ago and still unacknowledged are sent again. */
      ackTimeoutS: z.number().int('must be a whole number of seconds').min(10).max(86_400).default(300),
      /** The SQLite outbox while the broker is away: beyond either bound the oldest points are dropped (and counted). */
      buffer: z
        .strictObject({
          maxRows: z.number().int().min(100).default(100_000),
          /** Bytes of point JSON. */
          maxBytes: z.number().int().min(64 * 1024).default(32 * 1024 * 1024),
        })
        .prefault({}),
      upload: z
        .strictObject({
          batchPoints: z.number().int().min(1).max(10_000).default(500),
          batchBytes: z.number().int().min(1024).max(1024 * 1024).default(256 * 1024),
          /** Wait after a point is stored, so points written together share a batch. */
          debounceMs: z.number().int().min(0).max(60_000).default(250),
          /** Safety-net drain interval besides connects and appends. */
          periodMs: z.number().int().min(100).default(5_000),
          /** A batch without PUBACK this long while connected is sent again. */
          ackTimeoutMs: z.number().int().min(1_000).default(30_000),
          /** Bound on the final flush at shutdown. */
          stopTimeoutMs: z.number().int().min(0).max(30_000).default(2_000),
        })
        .prefault({}),
    })
    .prefault({}),
  log: z.strictObject({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info') }).prefault({}),
}).check((ctx) => {
  // A fixed port shared with another listener of the agent would fail at start with EADDRINUSE, or worse, not on every host.
  const { metrics, http, grpc } = ctx.value;
  if (metrics && metrics.port !== 0) {
    const taken = [
      { key: 'http.port', port: http.port },
      { key: 'grpc.port', port: grpc?.port },
    ].find((other) => other.port === metrics.port);
    if (taken) {
      ctx.issues.push({
        code: 'custom',
        input: metrics.port,
        path: ['metrics', 'port'],
        message: `must differ from ${taken.key} (${metrics.port}): the metrics listener needs a port of its own`,
      });
    }
  }
}).check((ctx) => {
  // On MQTT 5, mqtt.js applies the packet limit to what the agent sends too: a telemetry batch must fit.
  const { mqtt, telemetry } = ctx.value;
  const need = telemetry.upload.batchBytes + MQTT_PACKET_HEADROOM;
  // Either value already refused on its own says enough.
  const at = (path: string): boolean => ctx.issues.some((i) => i.path?.join('.') === path);
  if (at('mqtt.maxPacketBytes') || at('telemetry.upload.batchBytes')) return;
  if (mqtt && mqtt.maxPacketBytes < need) {
    ctx.issues.push({
      code: 'custom',
      input: mqtt.maxPacketBytes,
      path: ['mqtt', 'maxPacketBytes'],
      message: `must be at least telemetry.upload.batchBytes + ${MQTT_PACKET_HEADROOM} (${need}): a telemetry batch must fit in one packet`,
    });
  }
});

export type AgentConfig = z.infer<typeof configSchema>;
export type AgentConfigInput = z.input<typeof configSchema>;
