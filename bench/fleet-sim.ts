/**
 * A fleet of simulated devices speaking docs/protocol.md section 7 over a few
 * MQTT connections (not one per device): each device publishes its retained
 * status and reported state, an event now and then, and one telemetry batch
 * per interval at the agent's sizes: one inference point per model (as
 * InferenceRecorder.cut builds them, clientErrors included) and a health
 * point (as HealthSampler builds it, with the section 13 outbox figures),
 * seq per device strictly increasing. Batches are spread evenly over the
 * interval (device i at i/N of it), so N devices at 10 s make N/10 batches a
 * second without bursts.
 *
 * Section 12: a listener subscribes to every device's telemetry/ack and
 * records, per batch, the time from publish to the first ack covering it
 * (the collector acknowledges after committing). With `resendAfterMs`, a
 * batch still unacknowledged that long is published again, as an agent with
 * `telemetry.delivery: collector` does.
 *
 * With `answerDesired` (the rollout benchmark), each device also behaves as a
 * device towards desired documents (bench/sim-desired.ts): it subscribes to
 * its own and its group's desired topics, applies what counts and publishes
 * its new reported state, and its inference points are for the versions it
 * serves, with no errors and a steady latency (the same for every version),
 * so a rollout controller's gates have data that passes.
 */
import { connectAsync } from 'mqtt';
import type { MqttClient } from 'mqtt';
import { formatTime, parseTelemetryAck, parseTopic, topics } from '../protocol/index.js';
import { mulberry32 } from '../models/onnx/zoo.js';
import { SimDesiredState } from './sim-desired.js';

export interface FleetSimOptions {
  url: string;
  root?: string;
  devices: number;
  /** MQTT connections the devices share (device i on connection i mod K). */
  connections: number;
  /** Device ids are `${prefix}-00001`...; unique per run so retained messages of an earlier run do not count. */
  prefix?: string;
  intervalMs?: number;
  /** Models each device serves: one inference point each per batch. */
  models?: number;
  /** A health point in every `healthEvery`-th batch (the agent samples every 30 s, cuts inference every 10 s: 3). */
  healthEvery?: number;
  /** An event every this many batches per device (0: only the one at start). */
  eventEvery?: number;
  groups?: readonly string[];
  /** Track section 12 acks and measure publish-to-ack. */
  acks?: boolean;
  /** With acks: publish a batch again when it has no ack this long (ms). */
  resendAfterMs?: number;
  /** Answer desired documents as devices do (bench/sim-desired.ts); the devices start serving nothing. */
  answerDesired?: boolean;
}

interface Pending {
  lastSeq: number;
  at: number;
  topic: string;
  body: string | undefined;
}

export interface SimDevice {
  id: string;
  index: number;
  seq: number;
  batches: number;
  conn: MqttClient;
  pending: Pending[];
  acked: number;
  /** With answerDesired: what it applied and serves. */
  desired?: SimDesiredState;
}

export interface FleetSimStats {
  batchesPublished: number;
  batchesAcked: number;
  resent: number;
  publishErrors: number;
  /** How late the simulator published its most late batch (ms): its own CPU starvation. */
  maxLagMs: number;
  /** With answerDesired: desired documents applied and rejected, over all devices. */
  applied: number;
  rejected: number;
}

const MODEL_NAMES = ['mnist', 'ocr-rec', 'resnet50-int8', 'yolo-n', 'kws', 'anomaly', 'pose', 'depth'];

export class FleetSim {
  readonly root: string;
  readonly intervalMs: number;
  readonly devices: SimDevice[] = [];
  private readonly conns: MqttClient[] = [];
  private ackConn: MqttClient | undefined;
  private timer: NodeJS.Timeout | undefined;
  private resendTimer: NodeJS.Timeout | undefined;
  private readonly rand = mulberry32(7);
  private startedAt = 0;
  /** Index of the next batch to publish, counting over all devices and intervals. */
  private nextBatch = 0;
  private delaysMs: number[] = [];
  readonly stats: FleetSimStats = { batchesPublished: 0, batchesAcked: 0, resent: 0, publishErrors: 0, maxLagMs: 0, applied: 0, rejected: 0 };
  private readonly byId = new Map<string, SimDevice>();

  constructor(private readonly options: FleetSimOptions) {
    this.root = options.root ?? 'edgefleet';
    this.intervalMs = options.intervalMs ?? 10_000;
    if (options.devices < 1 || options.connections < 1) throw new Error('devices and connections must be at least 1');
  }

  get prefix(): string {
    return this.options.prefix ?? 'sim';
  }

  deviceId(i: number): string {
    return `${this.prefix}-${String(i).padStart(5, '0')}`;
  }

  /** Connects, publishes every device's retained status and state and one event; batches start with run(). */
  async connect(): Promise<void> {
    const { url, connections, devices } = this.options;
    for (let k = 0; k < connections; k++) {
      this.conns.push(await connectAsync(url, { protocolVersion: 5, clientId: `${this.prefix}-conn-${k}`, clean: true, reconnectPeriod: 1000 }));
    }
    if (this.options.acks) {
      const conn = await connectAsync(url, { protocolVersion: 5, clientId: `${this.prefix}-acks`, clean: true, reconnectPeriod: 1000 });
      conn.on('message', (topic, payload) => this.onAck(topic, payload));
      await conn.subscribeAsync(`${this.root}/devices/+/telemetry/ack`, { qos: 1 });
      this.ackConn = conn;
    }
    for (let i = 0; i < devices; i++) {
      const d: SimDevice = { id: this.deviceId(i), index: i, seq: 0, batches: 0, conn: this.conns[i % connections] as MqttClient, pending: [], acked: 0 };
      if (this.options.answerDesired) d.desired = new SimDesiredState(d.id, this.groupOf(i));
      this.devices.push(d);
      this.byId.set(d.id, d);
    }
    const now = Date.now();
    await this.inWaves(this.devices, async (d, i) => {
      await d.conn.publishAsync(topics.device(this.root, d.id, 'status'), JSON.stringify({ online: true, ts: formatTime(now) }), { qos: 1, retain: true });
      await d.conn.publishAsync(topics.device(this.root, d.id, 'state'), this.stateOf(d.id, i, now), { qos: 1, retain: true });
      await d.conn.publishAsync(topics.device(this.root, d.id, 'events'), this.eventOf(i, now), { qos: 1 });
    });
    if (this.options.answerDesired) await this.subscribeDesired();
  }

  /**
   * Each device's own desired topic and its group's, on the connection it
   * shares: a group's document comes once per connection and goes to every
   * device of that group on it. Retained documents arrive at once.
   */
  private async subscribeDesired(): Promise<void> {
    for (const [k, conn] of this.conns.entries()) {
      const mine = this.devices.filter((_, i) => i % this.conns.length === k);
      conn.on('message', (topic, payload) => this.onDesired(conn, topic, payload));
      const groups = [...new Set(mine.map((d) => (d.desired as SimDesiredState).group))];
      const list = [...mine.map((d) => topics.desired(this.root, { device: d.id })), ...groups.map((g) => topics.groupDesired(this.root, g))];
      for (let start = 0; start < list.length; start += 500) await conn.subscribeAsync(list.slice(start, start + 500), { qos: 1 });
    }
  }

  private onDesired(conn: MqttClient, topic: string, payload: Buffer): void {
    const parsed = parseTopic(this.root, topic);
    if (parsed?.kind !== 'desired') return;
    const target = parsed.target;
    const devices = target.device !== undefined
      ? [this.byId.get(target.device)].filter((d): d is SimDevice => d !== undefined)
      : this.devices.filter((d) => d.conn === conn && d.desired?.group === target.group);
    const now = Date.now();
    for (const d of devices) {
      const outcome = (d.desired as SimDesiredState).offer(target, payload, now);
      if (outcome === 'none') continue;
      if (outcome === 'applied') this.stats.applied++;
      else this.stats.rejected++;
      d.conn.publish(topics.device(this.root, d.id, 'state'), this.stateOf(d.id, d.index, now), { qos: 1, retain: true }, (err) => {
        if (err) this.stats.publishErrors++;
      });
    }
  }

  private groupOf(i: number): string {
    const groups = this.options.groups ?? ['lab', 'field', 'store-east', 'store-west'];
    return groups[i % groups.length] as string;
  }

  /** Starts the batches: device i first at i/N of an interval from now. */
  run(): void {
    this.startedAt = performance.now();
    this.nextBatch = 0;
    this.timer = setInterval(() => this.tick(), 5);
    if (this.options.acks && this.options.resendAfterMs !== undefined) {
      this.resendTimer = setInterval(() => this.resend(), Math.min(1000, this.options.resendAfterMs));
    }
  }

  /** Publish-to-ack delays (ms) of the batches acknowledged since the last call. */
  takeDelays(): number[] {
    const d = this.delaysMs;
    this.delaysMs = [];
    return d;
  }

  /** Stops publishing batches; acks are still received until stop(). */
  halt(): void {
    clearInterval(this.timer);
    clearInterval(this.resendTimer);
  }

  async stop(): Promise<void> {
    this.halt();
    await Promise.all([...this.conns, ...(this.ackConn ? [this.ackConn] : [])].map((c) => c.endAsync()));
  }

  /** Publishes every batch whose time has come (catching up when the event loop was busy). */
  private tick(): void {
    const n = this.devices.length;
    const elapsed = performance.now() - this.startedAt;
    const perBatch = this.intervalMs / n;
    while (this.nextBatch * perBatch <= elapsed) {
      const due = this.nextBatch * perBatch;
      this.stats.maxLagMs = Math.max(this.stats.maxLagMs, elapsed - due);
      this.publishBatch(this.devices[this.nextBatch % n] as SimDevice, this.nextBatch % n);
      this.nextBatch++;
    }
  }

  private publishBatch(d: SimDevice, i: number): void {
    const now = Date.now();
    const body = this.batchOf(d, i, now);
    const topic = topics.device(this.root, d.id, 'telemetry');
    if (this.options.acks) d.pending.push({ lastSeq: d.seq, at: performance.now(), topic, body: this.options.resendAfterMs === undefined ? undefined : body });
    d.batches++;
    this.stats.batchesPublished++;
    d.conn.publish(topic, body, { qos: 1 }, (err) => {
      if (err) this.stats.publishErrors++;
    });
    const every = this.options.eventEvery ?? 0;
    if (every > 0 && d.batches % every === 0) d.conn.publish(topics.device(this.root, d.id, 'events'), this.eventOf(i, now), { qos: 1 });
  }

  private onAck(topic: string, payload: Buffer): void {
    const parsed = parseTopic(this.root, topic);
    if (parsed?.kind !== 'telemetry-ack' || payload.length === 0) return;
    const ack = parseTelemetryAck(payload);
    const index = Number(/-(\d+)$/.exec(ack.device)?.[1]);
    const d = this.devices[index];
    if (d === undefined || d.id !== ack.device) return;
    const now = performance.now();
    while (d.pending.length > 0 && (d.pending[0] as Pending).lastSeq <= ack.upTo) {
      const p = d.pending.shift() as Pending;
      this.delaysMs.push(now - p.at);
      this.stats.batchesAcked++;
    }
    d.acked = Math.max(d.acked, ack.upTo);
  }

  private resend(): void {
    const limit = this.options.resendAfterMs ?? Infinity;
    const now = performance.now();
    for (const d of this.devices) {
      for (const p of d.pending) {
        if (now - p.at < limit || p.body === undefined) break;
        d.conn.publish(p.topic, p.body, { qos: 1 });
        this.stats.resent++;
      }
    }
  }

  /** Batches published but not yet acknowledged. */
  get unacked(): number {
    return this.devices.reduce((n, d) => n + d.pending.length, 0);
  }

  /** One batch as the agent's uploader sends it after a cut: the inference points, and a health point when one was sampled. */
  batchOf(d: SimDevice, i: number, now: number): string {
    const ts = formatTime(now);
    const r = this.rand;
    const points: unknown[] = [];
    const models = this.options.models ?? 2;
    if (d.desired !== undefined) points.push(...this.servedPoints(d, now));
    for (let m = 0; d.desired === undefined && m < models; m++) {
      const p50 = Math.round((0.2 + r() * 2) * 1000) / 1000;
      const p99 = Math.round(p50 * (2 + r()) * 1000) / 1000;
      const count = 50 + Math.floor(r() * 2000);
      points.push({
        seq: ++d.seq, ts, kind: 'inference', model: MODEL_NAMES[m % MODEL_NAMES.length], version: 1 + (i % 3), intervalS: this.intervalMs / 1000,
        count, errors: r() < 0.02 ? 1 + Math.floor(r() * 3) : 0, clientErrors: r() < 0.05 ? 1 : 0,
        latencyMs: { p50, p90: Math.round(p50 * 1.5 * 1000) / 1000, p99, max: Math.round(p99 * 1.4 * 1000) / 1000, mean: Math.round(p50 * 1.1 * 1000) / 1000 },
      });
    }
    if (d.batches % (this.options.healthEvery ?? 1) === 0) {
      points.push({
        seq: ++d.seq, ts, kind: 'health', cpuPct: Math.round(r() * 1000) / 10, load1: Math.round(r() * 400) / 100,
        memUsedBytes: 1_500_000_000 + Math.floor(r() * 2e9), memTotalBytes: 8_229_117_952, tempC: Math.round((40 + r() * 30) * 10) / 10,
        diskFreeBytes: 20_000_000_000 + Math.floor(r() * 1e9), rssBytes: 180_000_000 + Math.floor(r() * 5e7),
        uptimeS: 3600 + d.batches * 10, systemUptimeS: 86_400 + d.batches * 10, gpus: [], outboxRows: models + 1, outboxBytes: 900 + models * 330,
      });
    }
    return JSON.stringify({ schema: 1, device: d.id, points });
  }

  /**
   * With answerDesired: one inference point per version served, errors 0,
   * ~20 requests a second, and a p99 near 1.1 ms that depends on neither the
   * device nor the version (a few percent of jitter), as a healthy rollout.
   */
  private servedPoints(d: SimDevice, now: number): unknown[] {
    const r = this.rand;
    const ts = formatTime(now);
    return (d.desired as SimDesiredState).served.map((m) => {
      const p50 = Math.round(0.5 * (0.97 + r() * 0.06) * 1000) / 1000;
      const p99 = Math.round(p50 * 2.2 * 1000) / 1000;
      return {
        seq: ++d.seq, ts, kind: 'inference', model: m.name, version: m.version, intervalS: this.intervalMs / 1000,
        count: Math.max(1, Math.round((this.intervalMs / 1000) * (18 + r() * 4))), errors: 0, clientErrors: 0,
        latencyMs: { p50, p90: Math.round(p50 * 1.5 * 1000) / 1000, p99, max: Math.round(p99 * 1.3 * 1000) / 1000, mean: Math.round(p50 * 1.1 * 1000) / 1000 },
      };
    });
  }

  stateOf(device: string, i: number, now: number): string {
    const group = this.groupOf(i);
    const models = this.options.models ?? 2;
    const sim = this.byId.get(device)?.desired;
    return JSON.stringify({
      schema: 1, device, groups: [group], ts: formatTime(now),
      desired: sim !== undefined ? sim.desired : { source: 'group', group, serial: 12, status: 'applied', error: null },
      models: (sim !== undefined ? sim.served : Array.from({ length: models }, (_, m) => ({ name: MODEL_NAMES[m % MODEL_NAMES.length] as string, version: 1 + (i % 3), labels: ['stable'] }))).map((m) => ({
        name: m.name, version: m.version, state: 'serving', labels: m.labels, executionProvider: 'cpu',
        sha256: 'ab'.repeat(32), progress: 1, error: null,
      })),
      agent: { version: '0.1.0', arch: 'arm64', startedAt: formatTime(now - 3_600_000), executionProviders: { available: ['cpu'], unavailable: {} } },
      trust: { version: 1, expiresAt: '2031-01-01T00:00:00Z', error: null },
    });
  }

  eventOf(i: number, now: number): string {
    return JSON.stringify({ ts: formatTime(now), type: 'activated', model: MODEL_NAMES[0], version: 1 + (i % 3) });
  }

  /** Runs `fn` over `items`, at most 500 at a time (so 10,000 retained publishes do not all wait at once). */
  private async inWaves<T>(items: readonly T[], fn: (item: T, i: number) => Promise<void>): Promise<void> {
    for (let start = 0; start < items.length; start += 500) {
      await Promise.all(items.slice(start, start + 500).map((item, k) => fn(item, start + k)));
    }
  }
}
