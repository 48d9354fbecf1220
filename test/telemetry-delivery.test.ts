/**
 * telemetry.delivery `collector` (PROTOCOL.md section 12) against a real
 * Mosquitto: the agent's outbox, MqttConnection, uploader and ack listener,
 * wired as agent/main.ts wires them, and a plain mqtt.js client playing the
 * collector (it records every point it gets and publishes retained acks).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { connectAsync, type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseTelemetryBatch, topics } from '../protocol/index.js';
import { MqttConnection } from '../agent/mqtt/connection.js';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryAckListener } from '../agent/telemetry/ack-listener.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { DroppedPoint, NewPoint } from '../agent/telemetry/points.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import Database from 'better-sqlite3';
import { spawnAgent } from './helpers/child.js';
import { makeFleetKeys, writeTrust } from './helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`telemetry delivery tests skipped: ${skip}`);

const uid = (): string => randomBytes(4).toString('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

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

interface Arrival {
  seq: number;
  at: number;
  body: Record<string, unknown>;
}

/** A collector as far as the device can tell: takes every batch, and acknowledges when told to. */
class FakeCollector {
  readonly arrivals: Arrival[] = [];
  private constructor(
    readonly client: MqttClient,
    private readonly topicRoot: string,
  ) {}

  static async start(url: string, topicRoot: string): Promise<FakeCollector> {
    const client = await connectAsync(url, { protocolVersion: 5, clientId: `collector-${uid()}`, clean: true, reconnectPeriod: 100 });
    const collector = new FakeCollector(client, topicRoot);
    client.on('message', (_topic, payload) => {
      parseTelemetryBatch(payload); // every batch must satisfy the protocol schema
      const at = Date.now();
      for (const p of (JSON.parse(payload.toString()) as { points: Record<string, unknown>[] }).points) collector.arrivals.push({ seq: p.seq as number, at, body: p });
    });
    await client.subscribeAsync(`${topicRoot}/devices/+/telemetry`, { qos: 1 });
    return collector;
  }

  /** Publishes, retained, what a collector publishes after committing (or any payload a test wants the device to see). */
  async ack(deviceId: string, payload: unknown): Promise<void> {
    const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
    await this.client.publishAsync(topics.telemetryAck(this.topicRoot, deviceId), text, { qos: 1, retain: true });
  }

  seqs(): number[] {
    return [...new Set(this.arrivals.map((a) => a.seq))].sort((a, b) => a - b);
  }

  /** How often each seq arrived. */
  times(seq: number): number[] {
    return this.arrivals.filter((a) => a.seq === seq).map((a) => a.at);
  }
}

describe.skipIf(skip)('telemetry.delivery collector, against Mosquitto', () => {
  let broker: Mosquitto;
  let dir: string;
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-delivery-'));
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await broker.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** One device's telemetry as agent/main.ts wires it in collector mode; stop() is the agent's shutdown order. */
  async function device(options: { topicRoot: string; deviceId: string; resendAfterMs: number; maxRows?: number }) {
    const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
    const logger = pino(
      { level: 'debug' },
      new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as { level: number; msg: string });
          done();
        },
      }),
    );
    const db = AgentDatabase.open(join(dir, 'agent.db'));
    const { topicRoot, deviceId } = options;
    const outbox = new TelemetryOutbox({ database: () => db, maxRows: options.maxRows ?? 100_000, maxBytes: 1 << 30, logger });
    const connection = new MqttConnection({ config: { url: broker.url, topicRoot, keepaliveS: 30 }, deviceId, logger, initialBackoffMs: 100, maxBackoffMs: 300, stopTimeoutMs: 1000 });
    const acks = new TelemetryAckListener({ outbox, transport: connection, topicRoot, deviceId, logger, logIntervalMs: 0 });
    const uploader = new TelemetryUploader({
      outbox, transport: connection, topicRoot, deviceId, logger, delivery: 'collector', resendAfterMs: options.resendAfterMs,
      batchPoints: 50, batchBytes: 256 * 1024, debounceMs: 20, periodMs: 200, ackTimeoutMs: 30_000, stopTimeoutMs: 2000,
    });
    await outbox.start();
    await connection.start();
    await acks.start();
    await uploader.start();
    let stopped = false;
    const stop = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      await uploader.stop();
      await acks.stop();
      await outbox.stop();
      await connection.stop();
      db.close();
    };
    cleanups.push(stop);
    const rows = (): number[] => (db.db.prepare('SELECT seq FROM telemetry_outbox ORDER BY seq').all() as { seq: number }[]).map((r) => r.seq);
    return { outbox, connection, uploader, lines, rows, stop };
  }

  async function setup(resendAfterMs = 60_000, maxRows?: number) {
    const topicRoot = `t${uid()}`;
    const deviceId = `dev-${uid()}`;
    const collector = await FakeCollector.start(broker.url, topicRoot);
    cleanups.push(() => collector.client.endAsync(true));
    const agent = await device({ topicRoot, deviceId, resendAfterMs, ...(maxRows !== undefined && { maxRows }) });
    await waitFor(() => agent.connection.connected, 'the device to connect');
    return { topicRoot, deviceId, collector, agent };
  }

  it('keeps points after PUBACK until a collector acknowledges them; an ack deletes seqs <= upTo only, a lower one nothing', async () => {
    const { deviceId, collector, agent } = await setup();
    agent.outbox.append(range(1, 20).map(point));
    await waitFor(() => collector.seqs().length === 20, 'the broker to deliver 20 points');
    await sleep(300); // PUBACKs are in; in broker mode the rows would be gone by now
    expect(agent.rows()).toEqual(range(1, 20));

    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 12 });
    await waitFor(() => agent.rows().length === 8, 'the ack to delete 1..12');
    expect(agent.rows()).toEqual(range(13, 20));
    expect(agent.outbox.stats().ackedUpTo).toBe(12);

    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 5 });
    await waitFor(() => agent.lines.some((l) => l.msg === 'telemetry acknowledged by a collector' && l.upTo === 12), 'the first ack logged');
    await sleep(300);
    expect(agent.rows()).toEqual(range(13, 20));
    expect(agent.outbox.stats().ackedUpTo).toBe(12);
    // Nothing was sent twice: the ack timeout (60 s) has not passed.
    expect(collector.arrivals).toHaveLength(20);
  });

  it('ignores, with a log line saying why, an ack naming another device and a malformed ack', async () => {
    const { deviceId, collector, agent } = await setup();
    agent.outbox.append(range(1, 5).map(point));
    await waitFor(() => collector.seqs().length === 5, 'the points at the broker');
    await collector.ack(deviceId, { schema: 1, device: 'someone-else', upTo: 5 });
    await waitFor(() => agent.lines.some((l) => l.msg.startsWith('ignored a telemetry ack naming device "someone-else"')), 'the other-device log');
    await collector.ack(deviceId, '{"schema":1,"device":');
    await waitFor(() => agent.lines.some((l) => l.msg.startsWith('ignored a malformed telemetry ack on ')), 'the malformed log');
    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 99 });
    await waitFor(() => agent.lines.some((l) => l.msg.startsWith('ignored a telemetry ack up to seq 99: this device has issued seqs only up to 5')), 'the beyond-issued log');
    expect(agent.rows()).toEqual(range(1, 5));
    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 5 });
    await waitFor(() => agent.rows().length === 0, 'a good ack to delete them');
  });

  it('sends unacknowledged points again after the ack timeout, in seq order, and not before', async () => {
    const resendAfterMs = 1500;
    const { deviceId, collector, agent } = await setup(resendAfterMs);
    agent.outbox.append(range(1, 120).map(point)); // three batches of 50, 50, 20
    await waitFor(() => collector.seqs().length === 120, 'the first send');
    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 30 });
    await waitFor(() => collector.arrivals.length > 120 + 89, 'seqs 31..120 sent again', 10_000);
    // 1..30 were acknowledged: sent once. 31..120: exactly twice so far, the second time no sooner than the timeout.
    for (const seq of range(1, 30)) expect(collector.times(seq)).toHaveLength(1);
    for (const seq of range(31, 120)) {
      const [first, second] = collector.times(seq);
      expect(second).toBeDefined();
      // Measured at the collector: both deliveries' own delays differ by a few ms.
      expect((second ?? 0) - (first ?? 0)).toBeGreaterThanOrEqual(resendAfterMs - 100);
    }
    const resent = collector.arrivals.slice(120, 210).map((a) => a.seq);
    expect(resent).toEqual(range(31, 120));
    expect(agent.lines.some((l) => l.msg === 'sent telemetry again that no collector acknowledged in time')).toBe(true);
    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 120 });
    await waitFor(() => agent.rows().length === 0, 'the final ack');
    const count = collector.arrivals.length;
    await sleep(resendAfterMs + 500);
    expect(collector.arrivals).toHaveLength(count); // nothing left to send again
  });

  it('a restarted device keeps its unacknowledged points and sends them again; the retained ack it finds removes the stored ones', async () => {
    const resendAfterMs = 1000;
    const { topicRoot, deviceId, collector, agent } = await setup(resendAfterMs);
    agent.outbox.append(range(1, 40).map(point));
    await waitFor(() => collector.seqs().length === 40, 'the first send');
    await sleep(100);
    const started = Date.now();
    await agent.stop(); // does not wait for acks
    expect(Date.now() - started).toBeLessThan(2000);

    // While it is away the collector stores 1..10 and acknowledges them (retained).
    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 10 });
    const before = collector.arrivals.length;
    const again = await device({ topicRoot, deviceId, resendAfterMs });
    await waitFor(() => again.rows()[0] === 11, 'the retained ack to remove 1..10');
    await waitFor(() => collector.arrivals.length >= before + 30, 'the unacknowledged points sent again');
    expect(collector.arrivals.slice(before, before + 30).map((a) => a.seq)).toEqual(range(11, 40));
    await collector.ack(deviceId, { schema: 1, device: deviceId, upTo: 40 });
    await waitFor(() => again.rows().length === 0, 'the final ack');
  });

  it('the agent process (edgefleet-agent, delivery collector): SIGTERM exits 0 at once with points unacknowledged; restarted, it applies the retained ack and resends the rest after ackTimeoutS', async () => {
    const topicRoot = 'edgefleet';
    const collector = await FakeCollector.start(broker.url, topicRoot);
    cleanups.push(() => collector.client.endAsync(true));
    const trust = join(dir, 'trust.json');
    await writeTrust(trust, makeFleetKeys());
    const config = { trust, mqtt: { url: broker.url }, telemetry: { delivery: 'collector', ackTimeoutS: 10, health: { schedule: '* * * * * *' } } };
    const first = await spawnAgent(dir, config);
    cleanups.push(async () => void first.proc.kill('SIGKILL'));
    await waitFor(() => collector.seqs().length >= 3, 'three health points');
    const started = Date.now();
    first.proc.kill('SIGTERM');
    expect(await first.exited).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(5000); // nothing waits for a collector's ack
    const stateDb = join(dir, 'state', 'agent.db');
    const kept = (): number[] => {
      const db = new Database(stateDb, { readonly: true });
      try {
        return (db.prepare('SELECT seq FROM telemetry_outbox ORDER BY seq').all() as { seq: number }[]).map((r) => r.seq);
      } finally {
        db.close();
      }
    };
    const sent = collector.seqs();
    expect(kept()).toEqual(expect.arrayContaining(sent)); // broker-acknowledged, still kept

    // While it is down the collector acknowledges the first two.
    const upTo = sent[1] ?? 0;
    await collector.ack('child', { schema: 1, device: 'child', upTo });
    const arrivedBefore = collector.arrivals.length;
    const second = await spawnAgent(dir, config);
    cleanups.push(async () => void second.proc.kill('SIGKILL'));
    await waitFor(() => (kept()[0] ?? Infinity) > upTo, 'the restarted agent to apply the retained ack');
    // Points sent by the first run and not acknowledged come again once 10 s have passed since their send.
    const resent = sent.filter((seq) => seq > upTo);
    await waitFor(() => resent.every((seq) => collector.arrivals.slice(arrivedBefore).some((a) => a.seq === seq)), 'the unacknowledged points sent again', 20_000);
    for (const seq of resent) {
      const times = collector.times(seq);
      expect((times.at(-1) ?? 0) - (times[0] ?? 0), `seq ${seq}`).toBeGreaterThanOrEqual(10_000 - 100);
    }
    for (const seq of sent.filter((s) => s <= upTo)) expect(collector.times(seq)).toHaveLength(1);
    second.proc.kill('SIGTERM');
    expect(await second.exited).toEqual({ code: 0, signal: null });
  }, 60_000);

  it('keeps its bound while nothing is acknowledged, and the drop report reaches the collector', async () => {
    const { collector, agent } = await setup(60_000, 100);
    agent.outbox.append(range(1, 100).map(point));
    await waitFor(() => collector.seqs().length === 100, 'the first 100');
    agent.outbox.append(range(101, 160).map(point)); // 60 more: the 60 oldest, sent but unacknowledged, go
    await waitFor(() => collector.arrivals.some((a) => a.body.kind === 'dropped'), 'the dropped point');
    expect(agent.outbox.stats().rows).toBeLessThanOrEqual(101);
    const dropped = collector.arrivals.find((a) => a.body.kind === 'dropped')?.body as unknown as DroppedPoint;
    expect(dropped).toMatchObject({ count: 60, oldestSeq: 1, newestSeq: 60, reason: 'buffer full', totalDropped: 60 });
    expect(collector.seqs()).toEqual(range(1, 161));
  });
});
