/**
 * `edgefleet collect`: the fleet's telemetry collector, a long-running
 * service and the composition root of fleet/collector/: store, MQTT side,
 * dashboard; started in that order, stopped in reverse on SIGINT or SIGTERM.
 */
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from '../../agent/log.js';
import { parseTime } from '../../protocol/index.js';
import { expiryOption, listOf, parseOrUsage } from '../args.js';
import { Collector } from '../collector/collector.js';
import { DEFAULT_QUOTAS } from '../collector/ingest-guard.js';
import type { QuotaLimits } from '../collector/ingest-guard.js';
import { fleetMetricsSource } from '../collector/fleet-metrics.js';
import { DashboardServer, parseListen } from '../collector/http-server.js';
import { DB_HELP, describeDb, openStore, resolveDb } from '../collector/open-store.js';
import type { Command } from '../command.js';
import { readSigningKeys } from '../key-files.js';
import { RolloutController } from '../rollout/controller.js';
import { loadRules } from '../alerts/rules.js';
import { AlertService } from '../alerts/service.js';
import { UsageError, errorMessage } from '../errors.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings } from '../mqtt.js';
import { loadProfile } from '../profile.js';

const OPTIONS = {
  db: { type: 'string' },
  retention: { type: 'string' },
  http: { type: 'string' },
  metrics: { type: 'string' },
  'public-name': { type: 'string', multiple: true },
  'share-group': { type: 'string' },
  'client-id': { type: 'string' },
  'session-expiry': { type: 'string' },
  'log-level': { type: 'string' },
  connections: { type: 'string' },
  'max-models': { type: 'string' },
  'max-messages-per-minute': { type: 'string' },
  'max-bytes-per-minute': { type: 'string' },
  'max-event-bytes': { type: 'string' },
  'max-clock-skew': { type: 'string' },
  'rollout-key': { type: 'string', multiple: true },
  'rollout-tick': { type: 'string' },
  alerts: { type: 'string' },
  'alerts-every': { type: 'string' },
  ...BROKER_OPTIONS,
} as const;

const PUBLIC_NAME_RE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;
/** Sessions per collector: enough that one SQLite commit covers several messages (docs/collector.md). */
const DEFAULT_CONNECTIONS = 4;
const SHARE_GROUP_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const SIZE_UNITS: Record<string, number> = { '': 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };
/** The broker encodes the session expiry in 32 bits of seconds. */
const MAX_SESSION_EXPIRY_S = 0xfffffffe;

export const collect: Command = {
  name: 'collect',
  summary: 'store device telemetry, events, status and state; serve the dashboard',
  help: `usage: edgefleet collect --broker URL [--db URL] [--retention 30d] [--http 127.0.0.1:8600]
                        [--metrics 127.0.0.1:9600] [--share-group NAME] [--client-id ID] [--session-expiry 1d]

Subscribes to every device's telemetry and events through an MQTT 5 shared
subscription ($share/NAME/{root}/devices/+/telemetry), so collectors with the
same --share-group split the load, and to the retained status and state of
every device. Stores them; a point is stored once per (device, seq) however
often it arrives, and acknowledged to the broker only once stored. Runs until
SIGINT or SIGTERM. Logs are JSON lines on stdout.

With --mqtt-version 4 (MQTT 3.1.1 brokers such as aedes) there are no shared
subscriptions: every collector gets every message, so run one per store;
messages are still acknowledged only once stored, and the broker's own
settings decide how long it keeps the session (--session-expiry 0 asks for a
clean session, any other value is left to the broker).

Options:
${DB_HELP}
  --retention D       delete points and events older than D (30d; s, m, h, d, w; "off" keeps all)
  --http HOST:PORT    serve the dashboard and its JSON API there (off unless given;
                      unauthenticated: keep it on loopback behind a proxy that checks users)
  --metrics HOST:PORT serve only GET /metrics (Prometheus text, docs/monitoring.md) there;
                      --http serves /metrics too
  --public-name NAME  a host name browsers reach the dashboard by (a proxy's or DNS name);
                      repeatable. Requests naming any other host are refused (421)
                      against DNS rebinding; IP addresses and localhost always answer
  --share-group NAME  shared subscription group (default edgefleet-collectors; MQTT 5 only)
  --client-id ID      MQTT client id; stable and unique per collector instance, so
                      the broker keeps its session (default edgefleet-collector-HOSTNAME)
  --session-expiry D  how long the broker queues messages for a stopped collector
                      (default 1d; 0 ends the session when this run stops)
  --log-level L       ${LOG_LEVELS.join(', ')} (default info)
  --connections N     MQTT 5 sessions this collector opens in the share group (default
                      ${DEFAULT_CONNECTIONS}; 1 to 32; always 1 with --mqtt-version 4). Each session
                      hands over one message at a time, acknowledged after its commit;
                      with several, one commit stores what they bring together. Keep N
                      when restarting: a session no longer opened keeps its share of
                      messages queued until --session-expiry

Staged rollouts (edgefleet rollout start; docs/operator-guide.md):
  --rollout-key FILE[,FILE]  the rollout role's private key(s): this collector runs the
                             rollout controller (one collector per store leads at a time)
  --rollout-tick D           how often the controller looks at each rollout (default 2s)

Alerts without Prometheus (docs/alerts.md):
  --alerts FILE       evaluate the alert rules in FILE (YAML or JSON; a default is
                      provisioning/alerts/edgefleet-alerts.yaml) and notify its webhooks
                      (one collector per store evaluates at a time)
  --alerts-every D    how often the rules are evaluated (default 15s)

Per-device limits (docs/collector.md says why each default): what goes over
is dropped, acknowledged and counted per device, never stored.
  --max-models N               model names a device may have points stored under
                               (default ${DEFAULT_QUOTAS.maxModels}; 1 to 10000)
  --max-messages-per-minute N  messages on all channels (default ${DEFAULT_QUOTAS.messagesPerMinute}; 10 to 1000000)
  --max-bytes-per-minute SIZE  payload bytes on all channels (default ${formatSize(DEFAULT_QUOTAS.bytesPerMinute)}; 1MiB to 4GiB)
  --max-event-bytes SIZE       largest event stored (default ${formatSize(DEFAULT_QUOTAS.maxEventBytes)}; 1KiB to 1MiB)
  --max-clock-skew D           device times further than this from arrival are stored
                               as the arrival time and counted (default ${DEFAULT_QUOTAS.maxSkewMs / 1000}s; 1s to 7d)

${BROKER_HELP}`,

  async run(args, io) {
    const { values: given } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const profile = await loadProfile(given.profile);
    // The MQTT version may come from the profile; the checks below need the one in force.
    const profileVersion = profile.settings.mqttVersion === undefined ? undefined : String(profile.settings.mqttVersion);
    const values = { ...given, 'mqtt-version': given['mqtt-version'] ?? profileVersion };
    const settings = checkOptions(values);
    if (values['mqtt-version'] === '4' && values['share-group'] !== undefined) {
      throw new UsageError('--share-group needs MQTT 5 shared subscriptions; leave it out with --mqtt-version 4');
    }
    if (values['mqtt-version'] === '4' && values.connections !== undefined && values.connections !== '1') {
      throw new UsageError('--connections above 1 needs MQTT 5 shared subscriptions; leave it out with --mqtt-version 4');
    }
    const broker = await brokerSettings(given, { profile, warn: io.note });
    const log = createLogger({ level: settings.level });
    const db = resolveDb(values.db ?? profile.settings.db);
    const store = openStore(db, { cwd: io.cwd, onError: (err) => log.warn({ err: errorMessage(err) }, 'database connection problem') });
    const collector = new Collector({ broker, store, log, ...settings.collector });
    const rolloutKeys = listOf(values['rollout-key']);
    const controller =
      rolloutKeys.length > 0 &&
      new RolloutController({
        store, broker, log, keys: await readSigningKeys(rolloutKeys, io.note), holder: settings.collector.clientId,
        tickMs: values['rollout-tick'] === undefined ? 2_000 : durationMs(values['rollout-tick'], 'rollout-tick'),
      });
    const alertRules = values.alerts === undefined ? undefined : await loadRules(resolve(io.cwd, values.alerts));
    if (alertRules === undefined && values['alerts-every'] !== undefined) throw new UsageError('--alerts-every needs --alerts FILE');
    const alerts =
      alertRules !== undefined &&
      new AlertService({
        store, rules: alertRules, log, holder: settings.collector.clientId,
        everyMs: values['alerts-every'] === undefined ? undefined : durationMs(values['alerts-every'], 'alerts-every'),
      });
    const metrics = fleetMetricsSource(store, { collector: collector.stats, maxModels: settings.collector.quotas.maxModels ?? DEFAULT_QUOTAS.maxModels });
    const dashboard = settings.listen && new DashboardServer({ store, listen: settings.listen, log, publicNames: settings.publicNames, metrics });
    const metricsServer = settings.metricsListen && new DashboardServer({ store, listen: settings.metricsListen, log, publicNames: settings.publicNames, metrics, metricsOnly: true });
    const started: { stop(): Promise<void> }[] = [];
    try {
      await store.init();
      started.push({ stop: () => store.close() });
      log.info({ db: describeDb(db, io.cwd) }, 'store ready');
      await collector.start();
      started.push(collector);
      for (const server of [dashboard, metricsServer]) {
        if (!server) continue;
        await server.start();
        started.push(server);
      }
      if (controller) {
        controller.start();
        started.push(controller);
      }
      if (alerts) {
        alerts.start();
        started.push(alerts);
      }
      log.info({ signal: await untilSignal() }, 'stopping');
    } finally {
      for (const component of started.reverse()) await component.stop();
      log.flush();
    }
  },
};

type Values = { [K in Exclude<keyof typeof OPTIONS, 'public-name' | 'rollout-key'>]?: string | undefined } & { 'public-name'?: string[] | undefined };

/** The options that need no I/O, checked before anything starts. */
function checkOptions(values: Values) {
  const shareGroup = values['share-group'] ?? 'edgefleet-collectors';
  if (!SHARE_GROUP_RE.test(shareGroup)) throw new UsageError(`--share-group "${shareGroup}" must be 1-64 letters, digits, '_', '.', '-'`);
  const level = values['log-level'] ?? 'info';
  if (!LOG_LEVELS.includes(level)) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  const retention = values.retention ?? '30d';
  const expiry = values['session-expiry'] ?? '1d';
  // 0: the session ends with the connection (how an instance is retired: see docs/operator-guide.md).
  const sessionExpiryMs = expiry === '0' ? 0 : durationMs(expiry, 'session-expiry');
  const publicNames = values['public-name'] ?? [];
  for (const name of publicNames) {
    if (!PUBLIC_NAME_RE.test(name)) throw new UsageError(`--public-name "${name}" must be a DNS name such as fleet.example.com (no port, no scheme)`);
  }
  return {
    level,
    listen: values.http === undefined ? undefined : parseListen(values.http),
    metricsListen: values.metrics === undefined ? undefined : parseListen(values.metrics, 'metrics'),
    publicNames,
    collector: {
      clientId: values['client-id'] ?? `edgefleet-collector-${hostname()}`,
      shareGroup,
      sessionExpiryS: Math.min(MAX_SESSION_EXPIRY_S, Math.floor(sessionExpiryMs / 1000)),
      retentionMs: retention === 'off' ? null : durationMs(retention, 'retention'),
      quotas: quotaOptions(values),
      connections: values['mqtt-version'] === '4' ? 1 : integerOption(values.connections ?? String(DEFAULT_CONNECTIONS), 'connections', 1, 32),
    },
  };
}

/** The per-device limits given on the command line (the rest keep DEFAULT_QUOTAS). */
export function quotaOptions(values: Partial<Record<'max-models' | 'max-messages-per-minute' | 'max-bytes-per-minute' | 'max-event-bytes' | 'max-clock-skew', string>>): Partial<QuotaLimits> {
  const quotas: Partial<QuotaLimits> = {};
  const models = values['max-models'];
  if (models !== undefined) quotas.maxModels = integerOption(models, 'max-models', 1, 10_000);
  const messages = values['max-messages-per-minute'];
  if (messages !== undefined) quotas.messagesPerMinute = integerOption(messages, 'max-messages-per-minute', 10, 1_000_000);
  const bytes = values['max-bytes-per-minute'];
  if (bytes !== undefined) quotas.bytesPerMinute = sizeOption(bytes, 'max-bytes-per-minute', 1024 ** 2, 4 * 1024 ** 3);
  const event = values['max-event-bytes'];
  if (event !== undefined) quotas.maxEventBytes = sizeOption(event, 'max-event-bytes', 1024, 1024 ** 2);
  const skew = values['max-clock-skew'];
  if (skew !== undefined) {
    const ms = durationMs(skew, 'max-clock-skew');
    if (ms < 1000 || ms > 7 * 86_400_000) throw new UsageError(`--max-clock-skew must be from 1s to 7d, got "${skew}"`);
    quotas.maxSkewMs = ms;
  }
  return quotas;
}

function integerOption(value: string, flag: string, min: number, max: number): number {
  const n = /^\d{1,10}$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}, got "${value}"`);
  return n;
}

/** `16384`, `16KiB`, `8MiB`, `1GiB` as bytes. */
function sizeOption(value: string, flag: string, min: number, max: number): number {
  const m = /^(\d{1,10})(KiB|MiB|GiB)?$/.exec(value);
  const n = m ? Number(m[1]) * (SIZE_UNITS[m[2] ?? ''] ?? NaN) : NaN;
  if (!(n >= min && n <= max)) {
    throw new UsageError(`--${flag} must be a size from ${formatSize(min)} to ${formatSize(max)} (bytes, or with KiB, MiB, GiB), got "${value}"`);
  }
  return n;
}

function formatSize(bytes: number): string {
  for (const unit of ['GiB', 'MiB', 'KiB']) {
    const size = SIZE_UNITS[unit] as number;
    if (bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

/** `30d`, `12h`, `90s` as milliseconds. */
function durationMs(value: string, flag: string): number {
  if (!/^\d+[smhdw]$/.test(value)) throw new UsageError(`--${flag} must be a duration such as 30d, 12h or 90s, got "${value}"`);
  // expiryOption measures from `from`; from the epoch, the time it gives is the duration.
  return parseTime(expiryOption(value, flag, 0)) ?? 0;
}

function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals): void => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(signal);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
