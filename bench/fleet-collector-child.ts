/**
 * One collector in its own process (its own event loop, so its CPU and RSS
 * are its own), as `edgefleet collect` composes it: store, Collector,
 * dashboard on a free loopback port. For bench/fleet-scale.ts.
 *
 * Usage: node bench/fleet-collector-child.js '<JSON: {broker, db, clientId, shareGroup}>'
 * Prints `READY <dashboard port>` on stdout; writes `STATS <json>` to stderr
 * every 500 ms (Collector.stats and the event loop's delay: p99 and max since
 * the previous line, ms). SIGTERM stops it cleanly.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { pino } from 'pino';
import { Collector } from '../fleet/collector/collector.js';
import { DashboardServer } from '../fleet/collector/http-server.js';
import { openStore } from '../fleet/collector/open-store.js';

interface ChildConfig {
  broker: string;
  db: string;
  clientId: string;
  shareGroup: string;
  /** MQTT 5 sessions (edgefleet collect --connections). */
  connections?: number;
}

const raw = process.argv[2];
if (!raw) throw new Error('usage: fleet-collector-child.js <config JSON>');
const config = JSON.parse(raw) as ChildConfig;
const log = pino({ level: 'warn' }, pino.destination(2));
const store = openStore(config.db, { cwd: process.cwd(), onError: (err) => log.warn({ err: err.message }, 'database connection problem') });
await store.init();
const collector = new Collector({
  broker: { url: config.broker, topicRoot: 'edgefleet', tls: {} },
  store,
  clientId: config.clientId,
  shareGroup: config.shareGroup,
  connections: config.connections ?? 4,
  sessionExpiryS: 0,
  retentionMs: null,
  log,
});
await collector.start();
const dashboard = new DashboardServer({ store, listen: { host: '127.0.0.1', port: 0 }, log });
await dashboard.start();

const delay = monitorEventLoopDelay({ resolution: 5 });
delay.enable();
const timer = setInterval(() => {
  const eld = { eldP99Ms: delay.percentile(99) / 1e6, eldMaxMs: delay.max / 1e6 };
  delay.reset();
  process.stderr.write(`STATS ${JSON.stringify({ ...collector.stats, ...eld })}\n`);
}, 500);
process.stdout.write(`READY ${new URL(dashboard.url).port}\n`);

process.once('SIGTERM', () => {
  clearInterval(timer);
  void (async () => {
    await dashboard.stop();
    await collector.stop();
    await store.close();
    process.exit(0);
  })();
});
