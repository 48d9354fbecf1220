/**
 * Isolation (issue 13 item 1) where the database itself is the problem:
 * a payload whose parse error quotes a NUL (the quarantine entry must still
 * be storable), a PostgreSQL database that goes away and comes back (the
 * message waits unacknowledged, then is stored), a collector restarted on
 * the same session, and the section 12 acknowledgement over MQTT 3.1.1.
 * Real Mosquitto, SQLite and a real PostgreSQL.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import type { CollectorOptions } from '../fleet/collector/collector.js';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetStore } from '../fleet/collector/store.js';
import { DEFAULT_TOPIC_ROOT, parseTelemetryAck, topics } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { freshDatabase, postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './helpers/postgres.js';
import { waitFor as sharedWaitFor } from './helpers/agent.js';

const ROOT = DEFAULT_TOPIC_ROOT;
const skip = mosquittoSkipReason();
const pgSkip = postgresSkipReason();
const quiet = pino({ level: process.env.DEBUG_COLLECTOR ? 'debug' : 'silent' });
const iso = (ms = Date.now()): string => new Date(ms).toISOString();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const health = (seq: number): Record<string, unknown> => ({
  seq, ts: iso(), kind: 'health', cpuPct: 1, load1: 0.1, memUsedBytes: 1, memTotalBytes: 2, tempC: 40, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [],
});
const batch = (device: string, seqs: number[]): string => JSON.stringify({ schema: 1, device, points: seqs.map(health) });

/** The shared poll (test/helpers/agent.ts), with the description first and a 15 s default, as these tests read. */
const waitFor = <T>(what: string, check: () => Promise<T | undefined | false | null> | T | undefined | false | null, timeoutMs = 15_000): Promise<T> =>
  sharedWaitFor(async () => (await check()) ?? undefined, timeoutMs, what);

let broker: Mosquitto;
let dir: string;
let server: PostgresServer | undefined;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  if (skip) return;
  broker = await startMosquitto();
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-isolation-'));
  if (pgSkip === false) server = await startPostgres(postgresBin() as string);
}, 90_000);
afterAll(async () => {
  await broker?.stop();
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn().catch(() => undefined);
});

async function device(id: string, protocolVersion: 4 | 5 = 5): Promise<MqttClient> {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion, clientId: `dev-${id}-${Math.random().toString(16).slice(2)}` });
  cleanups.push(() => client.endAsync());
  // Retained acks of this test's devices are cleared, so no later test sees them.
  cleanups.push(async () => {
    const c = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    await c.publishAsync(topics.telemetryAck(ROOT, id), '', { qos: 1, retain: true });
    await c.endAsync();
  });
  return client;
}

function collectorOptions(store: FleetStore, options: Partial<CollectorOptions> = {}): CollectorOptions {
  return {
    broker: { url: broker.url, topicRoot: ROOT, tls: {} },
    store,
    clientId: `collector-${Math.random().toString(16).slice(2)}`,
    shareGroup: `g-${Math.random().toString(16).slice(2)}`,
    sessionExpiryS: 60,
    retentionMs: null,
    reconnectMs: 100,
    log: quiet,
    ...options,
  };
}

async function startCollector(options: CollectorOptions): Promise<Collector> {
  const collector = new Collector(options);
  await collector.start();
  cleanups.push(() => collector.stop());
  return collector;
}

const stored = async (store: FleetStore, device: string): Promise<number> => (await store.series(device, { from: 0, to: Date.now() + 60_000 })).health.length;

let files = 0;
const backends: { name: string; skip: string | false; open(): Promise<FleetStore> }[] = [
  { name: 'SQLite', skip: false, open: async () => new SqliteStore(join(dir, `isolation-${++files}.db`)) },
  { name: 'PostgreSQL', skip: pgSkip, open: async () => new PostgresStore(await freshDatabase(server as PostgresServer)) },
];

for (const backend of backends) {
  describe.skipIf(skip || backend.skip)(`collector isolation (${backend.name})`, () => {
    it('a payload whose parse error quotes a NUL is quarantined (the reason normalised), acknowledged once, and the next device is stored', async () => {
      const store = await backend.open();
      await store.init();
      cleanups.push(() => store.close());
      const collector = await startCollector(collectorOptions(store));
      const evil = await device('pi-nul-json');
      // JSON.parse says: Unexpected token '\u0000', "\u0000" is not valid JSON. PostgreSQL text cannot hold that NUL.
      await evil.publishAsync(topics.device(ROOT, 'pi-nul-json', 'telemetry'), Buffer.from([0]), { qos: 1 });
      await evil.publishAsync(topics.device(ROOT, 'pi-nul-json', 'events'), Buffer.from('{"ts":"\u0000", "type": 1}'), { qos: 1 });
      const good = await device('pi-after');
      await good.publishAsync(topics.device(ROOT, 'pi-after', 'telemetry'), batch('pi-after', [1]), { qos: 1 });
      await waitFor('the next device stored', async () => (await stored(store, 'pi-after')) === 1);
      const entries = await waitFor('two quarantine entries', async () => {
        const q = await store.quarantined(10);
        return q.length === 2 ? q : undefined;
      });
      const telemetry = entries.find((e) => e.topic.endsWith('/telemetry'));
      expect(telemetry).toMatchObject({ device: 'pi-nul-json', size: 1, reason: expect.stringContaining("Unexpected token '\uFFFD'") });
      expect(telemetry?.reason).not.toContain('\u0000');
      expect(Buffer.from(telemetry?.excerpt ?? []).equals(Buffer.from([0]))).toBe(true);
      expect(entries.find((e) => e.topic.endsWith('/events'))?.reason).toMatch(/^not valid: event/);
      await sleep(400);
      // Acknowledged: no reconnect, nothing redelivered.
      expect(collector.stats).toMatchObject({ quarantined: 2, rejected: 2, subscribes: 1, batches: 1 });
    });
  });
}

describe.skipIf(skip || pgSkip)('PostgreSQL going away and coming back', () => {
  it('a batch that arrives while the database is gone stays unacknowledged and is stored when it is back; a restarted collector goes on', async () => {
    const url = await freshDatabase(server as PostgresServer);
    const name = new URL(url).pathname.slice(1);
    const admin = (server as PostgresServer).admin;
    const store = new PostgresStore(url);
    await store.init();
    cleanups.push(() => store.close());
    const options = collectorOptions(store);
    const collector = new Collector(options);
    await collector.start();
    const pi = await device('pi-outage');
    const acks: number[] = [];
    pi.on('message', (_t, payload) => {
      if (payload.length > 0) acks.push(parseTelemetryAck(payload).upTo);
    });
    await pi.subscribeAsync(topics.telemetryAck(ROOT, 'pi-outage'), { qos: 1 });
    await pi.publishAsync(topics.device(ROOT, 'pi-outage', 'telemetry'), batch('pi-outage', [1]), { qos: 1 });
    await waitFor('ack 1', () => acks.at(-1) === 1);

    // The outage: no new connections to the database, and the store's are ended (SQLSTATE 57P01, then connection refused).
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
    await pi.publishAsync(topics.device(ROOT, 'pi-outage', 'telemetry'), batch('pi-outage', [2]), { qos: 1 });
    await waitFor('the collector to drop its connection for a redelivery', () => collector.stats.subscribes >= 2 || undefined, 10_000).catch(() => undefined);
    await sleep(1000);
    expect(collector.stats).toMatchObject({ batches: 1, quarantined: 0 });
    expect(acks.at(-1)).toBe(1);

    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
    await waitFor('batch 2 stored after the database came back', async () => (await stored(store, 'pi-outage')) === 2, 20_000);
    await waitFor('ack 2', () => acks.at(-1) === 2);
    expect(collector.stats.quarantined).toBe(0);

    // Restarted on the same session: what comes while it is away is stored when it is back.
    await collector.stop();
    await pi.publishAsync(topics.device(ROOT, 'pi-outage', 'telemetry'), batch('pi-outage', [3]), { qos: 1 });
    const again = await startCollector({ ...options });
    await waitFor('batch 3 stored by the restarted collector', async () => (await stored(store, 'pi-outage')) === 3);
    await waitFor('ack 3', () => acks.at(-1) === 3);
    expect(again.stats.batches).toBe(1);
  }, 60_000);
});

describe.skipIf(skip)('acknowledgement over MQTT 3.1.1', () => {
  it('a 3.1.1 device reads its retained ack: a gap holds it, and it passes once the gap is filled', async () => {
    const store = new SqliteStore(join(dir, 'v4.db'));
    await store.init();
    cleanups.push(() => store.close());
    const collector = await startCollector(collectorOptions(store, { broker: { url: broker.url, topicRoot: ROOT, tls: {}, protocolVersion: 4 }, sessionExpiryS: 0 }));
    const pi = await device('pi-v4', 4);
    await pi.publishAsync(topics.device(ROOT, 'pi-v4', 'telemetry'), batch('pi-v4', [5, 6]), { qos: 1 });
    await pi.publishAsync(topics.device(ROOT, 'pi-v4', 'telemetry'), batch('pi-v4', [8]), { qos: 1 });
    await waitFor('both batches stored', () => collector.stats.batches === 2);
    await waitFor('acks published', () => collector.stats.acks >= 1);
    // Subscribing afterwards: the retained ack is what the broker hands a device that comes back.
    const read = async (): Promise<number> => {
      const reader = await mqtt.connectAsync(broker.url, { protocolVersion: 4 });
      try {
        const got = new Promise<number>((resolve) => reader.on('message', (_t, p) => resolve(parseTelemetryAck(p).upTo)));
        await reader.subscribeAsync(topics.telemetryAck(ROOT, 'pi-v4'), { qos: 1 });
        return await got;
      } finally {
        await reader.endAsync();
      }
    };
    expect(await read()).toBe(6); // 7 is missing; the first batch set the start (5 - 1)
    await pi.publishAsync(topics.device(ROOT, 'pi-v4', 'telemetry'), batch('pi-v4', [7]), { qos: 1 });
    await waitFor('ack 8', async () => (await read()) === 8);
  });
});
