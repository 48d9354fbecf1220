/**
 * Issue 13 item 3, end to end (PROTOCOL.md section 12): devices built from the
 * agent's own outbox, MqttConnection, uploader and ack listener with
 * telemetry.delivery `collector`, a real Mosquitto, and the real Collector
 * (fleet/collector/collector.ts) on a SQLite store, which publishes acks after
 * committing. In each case the broker throws telemetry away after
 * acknowledging it to the device (a full queue, a restart without
 * persistence, shared subscriptions not yet restored), and every seq of every
 * device must still end up in the store, once.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { MqttConnection } from '../agent/mqtt/connection.js';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryAckListener } from '../agent/telemetry/ack-listener.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { NewPoint } from '../agent/telemetry/points.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto, type MosquittoOptions } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`telemetry delivery end-to-end tests skipped: ${skip}`);

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const uid = (): string => randomBytes(4).toString('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The broker's queue per persistent session in these tests. */
const QUEUE = 20;
/** telemetry.ackTimeoutS, shortened. */
const RESEND_AFTER_MS = 1500;
const SHARE_GROUP = 'edgefleet-collectors';

const point = (n: number): NewPoint => ({
  ts: new Date().toISOString(),
  kind: 'inference',
  model: 'mnist',
  version: 1,
  intervalS: 10,
  count: n,
  errors: 0,
  clientErrors: 0,
  latencyMs: { p50: 1, p90: 2, p99: 3, max: 4, mean: 1.5 },
});

describe.skipIf(skip)('telemetry acknowledged by the collector, end to end (real Collector, Mosquitto)', () => {
  let broker: Mosquitto;
  let dir: string;
  let storeFile: string;
  const topicRoot = 'edgefleet';
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-delivery-e2e-'));
    storeFile = join(dir, 'fleet.db');
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
    await broker.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function startBroker(options: MosquittoOptions): Promise<void> {
    broker = await startMosquitto({ maxQueuedMessages: QUEUE, logTypes: ['notice'], ...options });
  }

  /** One device's telemetry as agent/main.ts wires it with delivery `collector`. */
  async function device(deviceId: string) {
    const db = AgentDatabase.open(join(dir, `${deviceId}.db`));
    const outbox = new TelemetryOutbox({ database: () => db, maxRows: 100_000, maxBytes: 1 << 30, logger });
    const connection = new MqttConnection({ config: { url: broker.url, topicRoot, keepaliveS: 30 }, deviceId, logger, initialBackoffMs: 100, maxBackoffMs: 300, stopTimeoutMs: 1000 });
    const acks = new TelemetryAckListener({ outbox, transport: connection, topicRoot, deviceId, logger });
    // Five points a batch, so a few seconds of points are many more messages than the queue holds.
    const uploader = new TelemetryUploader({
      outbox, transport: connection, topicRoot, deviceId, logger, delivery: 'collector', resendAfterMs: RESEND_AFTER_MS,
      batchPoints: 5, batchBytes: 256 * 1024, debounceMs: 10, periodMs: 200, ackTimeoutMs: 30_000, stopTimeoutMs: 1000,
    });
    await outbox.start();
    await connection.start();
    await acks.start();
    await uploader.start();
    cleanups.push(async () => {
      await uploader.stop();
      await acks.stop();
      await outbox.stop();
      await connection.stop();
      db.close();
    });
    let n = 0;
    return {
      deviceId,
      outbox,
      connection,
      /** Stores `count` points, as the recorder does. */
      produce(count: number): void {
        outbox.append(Array.from({ length: count }, () => point(++n)));
      },
      issued: (): number => outbox.stats().nextSeq - 1,
    };
  }
  type Device = Awaited<ReturnType<typeof device>>;

  async function devices(count: number): Promise<Device[]> {
    const list: Device[] = [];
    for (let i = 0; i < count; i++) list.push(await device(`pi-${uid()}`));
    await waitFor(() => list.every((d) => d.connection.connected), 'the devices to connect');
    return list;
  }

  async function collector(clientId: string): Promise<Collector & { halt(): Promise<void> }> {
    const store = new SqliteStore(storeFile);
    await store.init();
    const c = new Collector({ broker: { url: broker.url, topicRoot, tls: {} }, store, clientId, shareGroup: SHARE_GROUP, sessionExpiryS: 600, retentionMs: null, reconnectMs: 100, log: logger });
    await c.start();
    let stopped = false;
    const stop = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      await c.stop();
      await store.close();
    };
    cleanups.push(stop);
    return Object.assign(c, { halt: stop });
  }

  /** Seqs stored for `device`, in order, read from the collector's SQLite file. */
  function stored(deviceId: string): number[] {
    const db = new Database(storeFile, { readonly: true, fileMustExist: true });
    try {
      return (db.prepare('SELECT seq FROM fleet_points WHERE device = ? ORDER BY seq').all(deviceId) as { seq: number }[]).map((r) => r.seq);
    } finally {
      db.close();
    }
  }

  /** Every device's every seq is stored once, and every device has deleted all of it on the collector's acks. */
  async function everySeqStoredOnce(list: readonly Device[], timeoutMs = 45_000): Promise<void> {
    await waitFor(() => list.every((d) => d.outbox.stats().rows === 0 && stored(d.deviceId).length === d.issued()), 'every seq stored and acknowledged', timeoutMs);
    for (const d of list) {
      expect(stored(d.deviceId), d.deviceId).toEqual(range(1, d.issued()));
      expect(d.outbox.stats().ackedUpTo, d.deviceId).toBe(d.issued());
    }
  }

  /** Each device stores `batches` batches of 5 points, one every `everyMs`. */
  async function produce(list: readonly Device[], batches: number, everyMs = 40): Promise<void> {
    for (let i = 0; i < batches; i++) {
      for (const d of list) d.produce(5);
      await sleep(everyMs);
    }
  }

  const brokerDropped = async (): Promise<boolean> => (await readFile(broker.logFile as string, 'utf8')).includes('Outgoing messages are being dropped for client');

  it(`collector stopped while devices send 3x the broker's queue limit (${QUEUE}): every seq stored once`, async () => {
    await startBroker({});
    const first = await collector('collector-a');
    const list = await devices(3);
    await produce(list, 4);
    await everySeqStoredOnce(list);

    await first.halt(); // its session stays: the broker queues up to QUEUE messages for it
    await produce(list, QUEUE); // 3 devices x 20 batches = 60 messages, 3x the queue
    await waitFor(brokerDropped, 'Mosquitto to drop messages for the stopped collector');

    await collector('collector-a');
    await everySeqStoredOnce(list);
  }, 90_000);

  it('broker restarted without persistence (sessions, queues and retained acks gone): every seq stored once', async () => {
    await startBroker({ persistence: false });
    const first = await collector('collector-a');
    const list = await devices(3);
    await produce(list, 5);
    await everySeqStoredOnce(list);

    // The devices reconnect first (the collector's backoff is longer, say): with no session
    // left for the collector, the broker has nobody to give their batches to.
    const producing = produce(list, 60, 50); // about 3 s, the outage inside it
    await sleep(300);
    await first.halt();
    await broker.restart({ downMs: 500 });
    await waitFor(() => list.every((d) => d.connection.connected), 'the devices to reconnect');
    await sleep(700);
    await collector('collector-a');
    await producing;
    await everySeqStoredOnce(list);
  }, 90_000);

  it('two shared-subscription collectors restarted with the broker: every seq stored once', async () => {
    await startBroker({});
    const a = await collector('collector-a');
    const b = await collector('collector-b');
    const list = await devices(3);
    await produce(list, 10);
    await everySeqStoredOnce(list);
    expect(a.stats.batches).toBeGreaterThan(0);
    expect(b.stats.batches).toBeGreaterThan(0); // the share group split the batches

    // Collectors and broker go down together; devices keep producing while the broker
    // comes back first (its restored sessions lack the shared subscriptions) and the collectors later.
    const producing = produce(list, 60, 50);
    await sleep(300);
    await Promise.all([a.halt(), b.halt()]);
    await broker.restart({ downMs: 500 });
    await sleep(700); // devices publish into a broker with no subscriber for telemetry
    const a2 = await collector('collector-a');
    const b2 = await collector('collector-b');
    await producing;
    await everySeqStoredOnce(list);
    expect(a2.stats.batches + b2.stats.batches).toBeGreaterThan(0);
  }, 90_000);
});
