import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseTelemetryBatch, topics } from '../protocol/index.js';
import { MqttConnection } from '../agent/mqtt/connection.js';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { DroppedPoint, NewPoint } from '../agent/telemetry/points.js';
import { TelemetryUploader, type TelemetryUploaderOptions } from '../agent/telemetry/uploader.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`telemetry uploader tests skipped: ${skip}`);

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const uid = (): string => randomBytes(4).toString('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
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

/** A plain mqtt.js collector with a persistent session, so it misses nothing across broker restarts. */
class Collector {
  readonly points: { seq: number; kind: string; body: Record<string, unknown> }[] = [];
  private constructor(readonly client: MqttClient) {}

  static async start(url: string, topic: string): Promise<Collector> {
    const client = await connectAsync(url, { protocolVersion: 5, clientId: `collector-${uid()}`, clean: false, properties: { sessionExpiryInterval: 600 }, reconnectPeriod: 100 });
    const collector = new Collector(client);
    client.on('message', (_topic, payload) => {
      parseTelemetryBatch(payload); // every batch must satisfy the protocol schema
      for (const p of (JSON.parse(payload.toString()) as { points: { seq: number; kind: string }[] }).points) collector.points.push({ seq: p.seq, kind: p.kind, body: p });
    });
    await client.subscribeAsync(topic, { qos: 1 });
    return collector;
  }

  /** Seqs after de-duplication, sorted. */
  seqs(): number[] {
    return [...new Set(this.points.map((p) => p.seq))].sort((a, b) => a - b);
  }
}

/** A TCP proxy to the broker that can withhold everything the broker sends (PUBACKs included). */
class HoldingProxy {
  hold = false;
  url = '';
  private readonly sockets = new Set<Socket>();
  private readonly server: Server = createServer((client) => this.pipe(client));

  private constructor(private readonly brokerPort: number) {}

  static async start(brokerPort: number): Promise<HoldingProxy> {
    const proxy = new HoldingProxy(brokerPort);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.url = `mqtt://127.0.0.1:${(proxy.server.address() as { port: number }).port}`;
    return proxy;
  }

  private pipe(client: Socket): void {
    const upstream = netConnect({ port: this.brokerPort, host: '127.0.0.1' });
    this.sockets.add(client).add(upstream);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      if (!this.hold) client.write(d);
    });
    const close = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', close).on('error', close);
    upstream.on('close', close).on('error', close);
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

describe.skipIf(skip)('TelemetryUploader with Mosquitto', () => {
  let broker: Mosquitto;
  let dir: string;
  let db: AgentDatabase;
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-uploader-'));
    db = AgentDatabase.open(join(dir, 'agent.db'));
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    db.close();
    await broker.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Outbox, connection and uploader as the agent wires them, plus a collector on the broker. */
  async function setup(options: { url?: string; maxRows?: number; uploader?: Partial<TelemetryUploaderOptions> } = {}) {
    const topicRoot = `t${uid()}`;
    const deviceId = `dev-${uid()}`;
    const collector = await Collector.start(broker.url, topics.device(topicRoot, deviceId, 'telemetry'));
    cleanups.push(() => collector.client.endAsync(true));
    const outbox = new TelemetryOutbox({ database: () => db, maxRows: options.maxRows ?? 100_000, maxBytes: 1 << 30, logger });
    const connection = new MqttConnection({
      config: { url: options.url ?? broker.url, topicRoot, keepaliveS: 30 },
      deviceId,
      logger,
      initialBackoffMs: 100,
      maxBackoffMs: 300,
      stopTimeoutMs: 1000,
    });
    const uploader = new TelemetryUploader({
      outbox, transport: connection, topicRoot, deviceId, logger,
      batchPoints: 50, batchBytes: 256 * 1024, debounceMs: 20, periodMs: 200, ackTimeoutMs: 30_000, stopTimeoutMs: 2000,
      ...options.uploader,
    });
    await outbox.start();
    await connection.start();
    await uploader.start();
    cleanups.push(async () => {
      await uploader.stop();
      await connection.stop();
      await outbox.stop();
    });
    return { outbox, connection, uploader, collector };
  }

  it('delivers every point exactly once after de-duplication, with no gaps, across a broker outage', async () => {
    const { outbox, connection, collector } = await setup();
    let n = 0;
    const producer = setInterval(() => outbox.append([point(++n), point(++n)]), 15);
    await sleep(400);
    const restarted = broker.restart({ downMs: 1500 });
    await waitFor(() => !connection.connected, 'the agent to notice the outage');
    await restarted;
    await waitFor(() => connection.connected, 'the agent to reconnect');
    await sleep(300);
    clearInterval(producer);
    await waitFor(() => outbox.stats().rows === 0 && collector.seqs().length === n, `all ${n} points at the collector`);
    expect(collector.seqs()).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    expect(n).toBeGreaterThan(100);
  });

  it('deletes rows only after PUBACK: a batch whose ack never came survives a broker stop and is sent again', async () => {
    const proxy = await HoldingProxy.start(broker.port);
    cleanups.push(() => proxy.stop());
    const { outbox, connection, collector } = await setup({ url: proxy.url });
    outbox.append(Array.from({ length: 10 }, (_, i) => point(i)));
    await waitFor(() => outbox.stats().rows === 0 && collector.seqs().length === 10, 'the first batch');

    proxy.hold = true; // the broker gets the PUBLISH; its PUBACK never reaches the agent
    outbox.append(Array.from({ length: 5 }, (_, i) => point(i)));
    await waitFor(() => collector.seqs().length === 15, 'the broker to deliver the held batch');
    await sleep(500);
    expect(outbox.stats().rows).toBe(5);

    const restarted = broker.restart({ downMs: 1000 });
    await waitFor(() => !connection.connected, 'the connection to drop');
    expect(outbox.stats().rows).toBe(5);
    proxy.hold = false;
    await restarted;
    await waitFor(() => outbox.stats().rows === 0, 'the resent batch to be acknowledged');
    expect(collector.seqs()).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
  });

  it('while the broker is down keeps within maxRows, and reports the dropped points after reconnecting', async () => {
    const { outbox, connection, collector } = await setup({ maxRows: 30 });
    const restarted = broker.restart({ downMs: 2000 });
    await waitFor(() => !connection.connected, 'the outage');
    for (let i = 1; i <= 100; i++) outbox.append([point(i)]);
    expect(outbox.stats()).toMatchObject({ rows: 30, droppedTotal: 70, pendingDrops: 70 });
    await restarted;
    await waitFor(() => outbox.stats().rows === 0 && collector.seqs().length === 31, 'the survivors and the drop report');

    expect(collector.seqs()).toEqual(Array.from({ length: 31 }, (_, i) => 71 + i));
    const dropped = collector.points.filter((p) => p.kind === 'dropped').map((p) => p.body as unknown as DroppedPoint);
    expect(dropped).toHaveLength(1);
    expect(dropped[0]).toMatchObject({ seq: 101, count: 70, oldestSeq: 1, newestSeq: 70, reason: 'buffer full', totalDropped: 70 });
    expect(outbox.stats()).toMatchObject({ droppedTotal: 70, pendingDrops: 0 });
  });

  it('stop() flushes what it can, within its bound', async () => {
    const proxy = await HoldingProxy.start(broker.port);
    cleanups.push(() => proxy.stop());
    const { outbox, uploader, collector } = await setup({ url: proxy.url, uploader: { stopTimeoutMs: 500, batchPoints: 500 } });
    outbox.append(Array.from({ length: 1200 }, (_, i) => point(i)));
    await uploader.stop();
    expect(outbox.stats().rows).toBe(0);
    await waitFor(() => collector.seqs().length === 1200, 'the flushed points');

    await uploader.start();
    proxy.hold = true;
    outbox.append([point(1)]);
    const started = performance.now();
    await uploader.stop();
    expect(performance.now() - started).toBeLessThan(1500);
    expect(outbox.stats().rows).toBe(1); // no PUBACK: kept for the next start
  });
});
