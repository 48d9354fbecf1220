/**
 * A device cannot stall or poison the collector (issue 13): hostile text,
 * messages the database refuses, floods over the quotas, a clock in 2099.
 * Real Mosquitto; both stores, PostgreSQL a real server. Each case says what
 * the hostile input gets, and checks that everyone else's data still flows.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import type { MqttClient } from 'mqtt';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import type { CollectorOptions } from '../fleet/collector/collector.js';
import { isPermanentStoreError, normaliseText } from '../fleet/collector/ingest-guard.js';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { FleetStore } from '../fleet/collector/store.js';
import { DEFAULT_TOPIC_ROOT, parseTelemetryAck, reportedStateSchema, telemetryBatchSchema, topics } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { freshDatabase, postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './helpers/postgres.js';
import { waitFor as sharedWaitFor } from './helpers/agent.js';

const ROOT = DEFAULT_TOPIC_ROOT;
const skip = mosquittoSkipReason();
const pgSkip = postgresSkipReason();
const quiet = pino({ level: process.env.DEBUG_COLLECTOR ? 'debug' : 'silent' });
const iso = (ms = Date.now()): string => new Date(ms).toISOString();

function health(seq: number, ts = Date.now()): Record<string, unknown> {
  return { seq, ts: iso(ts), kind: 'health', cpuPct: 1, load1: 0.1, memUsedBytes: 1, memTotalBytes: 2, tempC: 40, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [] };
}

function inference(seq: number, model: string, ts = Date.now()): Record<string, unknown> {
  return { seq, ts: iso(ts), kind: 'inference', model, version: 1, intervalS: 10, count: 1, errors: 0, latencyMs: null };
}

const batch = (device: string, points: Record<string, unknown>[]): Buffer => Buffer.from(JSON.stringify({ schema: 1, device, points }));

function state(device: string, extra: { ts?: string; error?: string } = {}): Buffer {
  const now = extra.ts ?? iso();
  return Buffer.from(
    JSON.stringify({
      schema: 1, device, groups: ['lab'], ts: now,
      desired: { source: 'device', serial: 1, status: 'failed', error: extra.error ?? null },
      models: [],
      agent: { version: '0.1.0', arch: 'arm64', startedAt: now, executionProviders: { available: ['cpu'], unavailable: {} } },
    }),
  );
}

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
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-hostile-'));
  if (pgSkip === false) server = await startPostgres(postgresBin() as string);
}, 90_000);
afterAll(async () => {
  await broker?.stop();
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

async function device(id: string): Promise<MqttClient> {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: `dev-${id}-${Math.random().toString(16).slice(2)}` });
  cleanups.push(() => client.endAsync());
  return client;
}

/** Retained topics published by the test: cleared after it, so the next test's collector does not get them. */
const retained = new Set<string>();

afterEach(async () => {
  if (retained.size === 0) return;
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  for (const topic of retained) await client.publishAsync(topic, '', { qos: 1, retain: true });
  retained.clear();
  await client.endAsync();
});

function send(client: MqttClient, id: string, channel: 'telemetry' | 'events' | 'state' | 'status', body: Buffer | string): Promise<unknown> {
  const retain = channel === 'state' || channel === 'status';
  if (retain) retained.add(topics.device(ROOT, id, channel));
  if (channel === 'telemetry') retained.add(topics.telemetryAck(ROOT, id));
  return client.publishAsync(topics.device(ROOT, id, channel), body, { qos: 1, retain });
}

async function startCollector(store: FleetStore, options: Partial<CollectorOptions> = {}): Promise<Collector> {
  const collector = new Collector({
    broker: { url: broker.url, topicRoot: ROOT, tls: {} },
    store,
    clientId: `collector-${Math.random().toString(16).slice(2)}`,
    shareGroup: `g-${Math.random().toString(16).slice(2)}`,
    sessionExpiryS: 60,
    retentionMs: null,
    reconnectMs: 100,
    log: quiet,
    ...options,
  });
  await collector.start();
  cleanups.push(() => collector.stop());
  return collector;
}

let sqliteFiles = 0;
const backends: { name: string; skip: string | false; open(): Promise<FleetStore> }[] = [
  {
    name: 'SQLite',
    skip: false,
    async open() {
      const store = new SqliteStore(join(dir, `hostile-${++sqliteFiles}.db`));
      await store.init();
      cleanups.push(() => store.close());
      return store;
    },
  },
  {
    name: 'PostgreSQL',
    skip: pgSkip,
    async open() {
      const store = new PostgresStore(await freshDatabase(server as PostgresServer));
      await store.init();
      cleanups.push(() => store.close());
      return store;
    },
  },
];

/** A real error from the backend's driver for a row it refuses for good. */
async function realPermanentError(kind: string): Promise<unknown> {
  if (kind === 'sqlite') {
    const db = new Database(':memory:');
    db.exec('CREATE TABLE t (x TEXT NOT NULL)');
    try {
      db.prepare('INSERT INTO t VALUES (NULL)').run();
    } catch (err) {
      return err;
    } finally {
      db.close();
    }
  }
  const client = new pg.Client({ host: '127.0.0.1', port: server?.port, user: 'postgres', database: 'postgres' });
  await client.connect();
  try {
    await client.query("SELECT 'not a number'::int");
  } catch (err) {
    return err;
  } finally {
    await client.end();
  }
  throw new Error('expected an error');
}

describe('isPermanentStoreError: what retrying cannot fix', () => {
  it.each([
    ['22P05', true], // untranslatable character (NUL in jsonb)
    ['22P02', true], // invalid text representation
    ['23505', true], // unique violation
    ['22003', true], // numeric out of range
    ['08006', false], // connection failure
    ['57P01', false], // admin shutdown
    ['53100', false], // disk full
    ['40001', false], // serialization failure
    ['SQLITE_CONSTRAINT_NOTNULL', true],
    ['SQLITE_TOOBIG', true],
    ['SQLITE_FULL', false],
    ['SQLITE_BUSY', false],
    ['SQLITE_IOERR_WRITE', false],
  ])('%s: permanent %s', (code, permanent) => {
    expect(isPermanentStoreError(Object.assign(new Error('x'), { code }))).toBe(permanent);
  });

  it('an error without a code (a bug, a timeout) is passing: the message waits', () => {
    expect(isPermanentStoreError(new Error('boom'))).toBe(false);
  });

  it('normalises NUL and unpaired surrogates, keys included, and leaves good text alone', () => {
    const good = { a: 'plain', b: ['😀 pair', 1, null] };
    expect(normaliseText(good)).toEqual({ value: good, replaced: 0 });
    expect(normaliseText({ 'k\u0000': 'x\u0000y', s: ['\uD800a', 'b\uDC00', '\uD83D\uDE00'] })).toEqual({
      value: { 'k\uFFFD': 'x\uFFFDy', s: ['\uFFFDa', 'b\uFFFD', '\uD83D\uDE00'] },
      replaced: 4,
    });
  });
});

for (const backend of backends) {
  describe.skipIf(skip || backend.skip)(`collector against hostile devices (${backend.name})`, () => {
    it('text PostgreSQL cannot hold (NUL, unpaired surrogates) is stored normalised; nobody is blocked, nothing reconnects', async () => {
      const store = await backend.open();
      const collector = await startCollector(store);
      const fail = (what: string) => async (err: unknown): Promise<never> => {
        throw new Error(`${what}: ${String(err)}: ${JSON.stringify(collector.stats)} ${JSON.stringify(await store.fleetStatus())}`);
      };
      const evil = await device('pi-nul');
      await send(evil, 'pi-nul', 'state', state('pi-nul', { error: 'bad\u0000text \uD800 here' }));
      await send(evil, 'pi-nul', 'events', JSON.stringify({ ts: iso(), type: 'verify.failed', detail: 'nul\u0000 and \uDC00 lone' }));
      const good = await device('pi-good');
      await send(good, 'pi-good', 'telemetry', batch('pi-good', [health(1)]));
      const rows = await waitFor('both devices stored', async () => {
        const fleet = await store.fleetStatus();
        return fleet.length === 2 && fleet.every((r) => r.lastSeen !== null) && fleet;
      }).catch(fail('stored'));
      expect(rows.find((r) => r.device === 'pi-nul')?.desired?.error).toBe('bad\uFFFDtext \uFFFD here');
      const events = await waitFor('the event', async () => {
        const e = await store.events('pi-nul', { from: 0, to: Date.now() + 1000 });
        return e.length === 1 && e;
      });
      expect(events[0]?.detail).toBe('nul\uFFFD and \uFFFD lone');
      expect(collector.stats).toMatchObject({ normalised: 4, quarantined: 0, subscribes: 1 });
    });

    it('a message the database refuses for good is acknowledged, quarantined with why, counted, and the next one flows', async () => {
      const inner = await backend.open();
      const refusal = await realPermanentError(inner.kind);
      const store: FleetStore = Object.assign(Object.create(inner) as FleetStore, {
        insertEvent: (d: string, e: Parameters<FleetStore['insertEvent']>[1], at?: number) =>
          d === 'pi-refused' ? Promise.reject(refusal as Error) : inner.insertEvent(d, e, at),
      });
      const collector = await startCollector(store);
      const evil = await device('pi-refused');
      await send(evil, 'pi-refused', 'events', JSON.stringify({ ts: iso(), type: 'activated', detail: 'refused' }));
      await send(evil, 'pi-refused', 'telemetry', batch('pi-refused', [health(1)]));
      const good = await device('pi-fine');
      await send(good, 'pi-fine', 'events', JSON.stringify({ ts: iso(), type: 'activated' }));
      await waitFor('the other device stored', async () => (await inner.events('pi-fine', { from: 0, to: Date.now() + 1000 })).length === 1);
      const [entry] = await waitFor('the quarantine entry', async () => {
        const q = await inner.quarantined(10);
        return q.length === 1 && q;
      });
      expect(entry).toMatchObject({ device: 'pi-refused', topic: topics.device(ROOT, 'pi-refused', 'events'), reason: expect.stringMatching(/^refused by the (sqlite|postgres) store: /) });
      expect(JSON.parse(Buffer.from(entry?.excerpt ?? []).toString())).toMatchObject({ detail: 'refused' });
      // Acknowledged: not redelivered, no reconnect; the same device's telemetry is stored.
      await new Promise((r) => setTimeout(r, 500));
      expect(collector.stats).toMatchObject({ quarantined: 1, subscribes: 1, batches: 1 });
      const row = await waitFor('the per-device count', async () => (await inner.fleetStatus()).find((r) => r.device === 'pi-refused' && r.quarantined === 1));
      expect(row.quarantined).toBe(1);
    });

    it('a payload that is not valid is quarantined with the validation message', async () => {
      const store = await backend.open();
      const collector = await startCollector(store);
      const evil = await device('pi-junk');
      await send(evil, 'pi-junk', 'telemetry', Buffer.from([0xff, 0xfe, 0x00]));
      await send(evil, 'pi-junk', 'events', JSON.stringify({ ts: 'yesterday', type: 'x' }));
      const entries = await waitFor('two quarantine entries', async () => {
        const q = await store.quarantined(10);
        return q.length === 2 && q;
      });
      expect(entries.map((e) => e.reason).sort()).toEqual([expect.stringMatching(/^not valid: event/), expect.stringMatching(/^not valid: telemetry batch is not UTF-8 JSON/)]);
      expect(collector.stats.rejected).toBe(2);
    });

    it('10,000 model names from one device: 64 are stored, the rest counted, and the acknowledgement passes them all', async () => {
      const store = await backend.open();
      const collector = await startCollector(store);
      const evil = await device('pi-models');
      const acks: number[] = [];
      const watcher = await device('watch-models');
      await watcher.subscribeAsync(topics.telemetryAck(ROOT, 'pi-models'), { qos: 1 });
      watcher.on('message', (_t, payload) => payload.length > 0 && acks.push(parseTelemetryAck(payload).upTo));
      let seq = 0;
      for (let b = 0; b < 50; b++) {
        const points = Array.from({ length: 200 }, () => {
          seq++;
          return inference(seq, `m${seq}`);
        });
        await send(evil, 'pi-models', 'telemetry', batch('pi-models', points));
      }
      await waitFor('every batch', () => collector.stats.batches === 50, 30_000);
      expect(collector.stats.overQuota).toBe(10_000 - 64);
      expect((await store.deviceModels('pi-models')).length).toBe(64);
      await waitFor('acknowledged up to the last seq', () => acks.at(-1) === 10_000);
      const row = await waitFor('the count', async () => (await store.fleetStatus()).find((r) => r.device === 'pi-models' && r.overQuota > 0));
      expect(row.overQuota).toBe(10_000 - 64);
      expect(row.inference).toHaveLength(64);
    }, 60_000);

    it('events over the size limit and messages over the rate are dropped and counted; the device is served again within quota', async () => {
      const store = await backend.open();
      const collector = await startCollector(store, { quotas: { messagesPerMinute: 20, bytesPerMinute: 256 * 1024 * 1024 } });
      const evil = await device('pi-flood');
      // 512 KiB: 32 times the event limit, within the test broker's 1 MiB packet limit.
      const big = JSON.stringify({ ts: iso(), type: 'activated', detail: 'x'.repeat(512 * 1024) });
      for (let i = 0; i < 10; i++) await send(evil, 'pi-flood', 'events', big);
      await send(evil, 'pi-flood', 'events', JSON.stringify({ ts: iso(), type: 'small' }));
      await waitFor('the small event', async () => (await store.events('pi-flood', { from: 0, to: Date.now() + 1000 })).length === 1);
      expect(collector.stats.overQuota).toBe(10);
      // 11 messages so far; 9 more within the minute's 20, then every one is over.
      for (let i = 0; i < 15; i++) await send(evil, 'pi-flood', 'events', JSON.stringify({ ts: iso(), type: `e${i}` }));
      await waitFor('the rate refusals counted', () => collector.stats.overQuota === 16);
      expect((await store.events('pi-flood', { from: 0, to: Date.now() + 1000 })).length).toBe(10);
      const good = await device('pi-calm');
      await send(good, 'pi-calm', 'events', JSON.stringify({ ts: iso(), type: 'activated' }));
      await waitFor('another device unaffected', async () => (await store.events('pi-calm', { from: 0, to: Date.now() + 1000 })).length === 1);
      const row = await waitFor('the count', async () => (await store.fleetStatus()).find((r) => r.device === 'pi-flood' && r.overQuota === 16));
      expect(row.overQuota).toBe(16);
    }, 60_000);

    it('a clock in 2099: stored with the arrival time, counted, last seen is now, and retention deletes it', async () => {
      const store = await backend.open();
      const collector = await startCollector(store);
      const evil = await device('pi-2099');
      const future = Date.parse('2099-01-01T00:00:00Z');
      const before = Date.now();
      await send(evil, 'pi-2099', 'status', JSON.stringify({ online: true, ts: iso(future) }));
      await send(evil, 'pi-2099', 'state', state('pi-2099', { ts: iso(future) }));
      await send(evil, 'pi-2099', 'events', JSON.stringify({ ts: iso(future), type: 'activated' }));
      await send(evil, 'pi-2099', 'telemetry', batch('pi-2099', [health(1, future)]));
      await waitFor('all four stored', () => collector.stats.batches === 1 && collector.stats.events === 1 && collector.stats.states === 1 && collector.stats.statuses === 1).catch((err: unknown) => {
        throw new Error(`${String(err)}: ${JSON.stringify(collector.stats)}`);
      });
      expect(collector.stats.clockSkewed).toBe(4);
      const row = await waitFor('the count', async () => (await store.fleetStatus()).find((r) => r.device === 'pi-2099' && r.clockSkewed === 4));
      const lastSeen = Date.parse(row.lastSeen ?? '');
      expect(lastSeen).toBeGreaterThanOrEqual(before - 1000);
      expect(lastSeen).toBeLessThanOrEqual(Date.now() + 1000);
      expect(Date.parse(row.health?.ts ?? '')).toBeLessThanOrEqual(Date.now() + 1000);
      // A newer state from a device whose clock is now right replaces the 2099 one.
      await send(evil, 'pi-2099', 'state', state('pi-2099', { error: 'clock fixed' }));
      await waitFor('the corrected state', async () => (await store.fleetStatus()).find((r) => r.device === 'pi-2099')?.desired?.error === 'clock fixed');
      // Retention goes by arrival: a cut-off just after now deletes the point and the event.
      expect(await store.prune(Date.now() + 1)).toEqual({ points: 1, events: 1 });
    });

    it('acknowledges the stored prefix (section 12): a gap holds it, a dropped point covers it, duplicates ack again', async () => {
      const store = await backend.open();
      await startCollector(store);
      const pi = await device('pi-ack');
      const acks: number[] = [];
      pi.on('message', (_t, payload) => {
        if (payload.length > 0) acks.push(parseTelemetryAck(payload).upTo);
      });
      await pi.subscribeAsync(topics.telemetryAck(ROOT, 'pi-ack'), { qos: 1 });
      await send(pi, 'pi-ack', 'telemetry', batch('pi-ack', [health(1), health(2), health(3)]));
      await waitFor('ack 3', () => acks.at(-1) === 3);
      await send(pi, 'pi-ack', 'telemetry', batch('pi-ack', [health(6)]));
      await new Promise((r) => setTimeout(r, 600));
      expect(acks.at(-1)).toBe(3); // 4 and 5 are missing
      await send(pi, 'pi-ack', 'telemetry', batch('pi-ack', [health(4), { seq: 7, ts: iso(), kind: 'dropped', count: 1, oldestSeq: 5, newestSeq: 5, reason: 'buffer full' }]));
      await waitFor('ack 7', () => acks.at(-1) === 7);
      // The retained ack is lost (a broker without persistence): the device sends again and is acknowledged again.
      await pi.publishAsync(topics.telemetryAck(ROOT, 'pi-ack'), '', { qos: 1, retain: true });
      acks.length = 0;
      await send(pi, 'pi-ack', 'telemetry', batch('pi-ack', [health(6), health(7)]));
      await waitFor('ack 7 again', () => acks.at(-1) === 7);
      const row = await waitFor('the dropped figure', async () => (await store.fleetStatus()).find((r) => r.device === 'pi-ack'));
      expect(row.dropped).toEqual({ count: 1, lastAt: expect.any(String) });
    });
  });
}

describe.skipIf(skip || pgSkip)('two collectors on one PostgreSQL', () => {
  it('split one device\'s batches and acknowledge every seq; the stored prefix never goes down', async () => {
    const url = await freshDatabase(server as PostgresServer);
    const stores = [new PostgresStore(url), new PostgresStore(url)];
    for (const s of stores) {
      await s.init();
      cleanups.push(() => s.close());
    }
    const group = `pair-${Math.random().toString(16).slice(2)}`;
    const collectors = [await startCollector(stores[0] as FleetStore, { shareGroup: group }), await startCollector(stores[1] as FleetStore, { shareGroup: group })];
    const pi = await device('pi-pair');
    const acks: number[] = [];
    pi.on('message', (_t, payload) => payload.length > 0 && acks.push(parseTelemetryAck(payload).upTo));
    await pi.subscribeAsync(topics.telemetryAck(ROOT, 'pi-pair'), { qos: 1 });
    for (let seq = 1; seq <= 200; seq++) await send(pi, 'pi-pair', 'telemetry', batch('pi-pair', [health(seq)]));
    await waitFor('acknowledged up to 200', () => Math.max(...acks) === 200, 30_000);
    expect(collectors.every((c) => c.stats.batches > 0)).toBe(true);
    expect(collectors.reduce((n, c) => n + c.stats.batches, 0)).toBe(200);
    const check = new pg.Client({ connectionString: url });
    await check.connect();
    const { rows } = await check.query<{ up: string }>("SELECT ack_up_to AS up FROM fleet_devices WHERE device = 'pi-pair'");
    await check.end();
    expect(Number(rows[0]?.up)).toBe(200);
  }, 60_000);
});

// The schema check keeps the fixtures honest.
it('fixtures are valid protocol', () => {
  expect(() => telemetryBatchSchema.parse(JSON.parse(batch('pi', [health(1), inference(2, 'm')]).toString()))).not.toThrow();
  expect(() => reportedStateSchema.parse(JSON.parse(state('pi').toString()))).not.toThrow();
});
