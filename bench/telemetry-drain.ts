/**
 * Part 2 of the telemetry benchmark: draining a full outbox over loopback
 * Mosquitto. The outbox (the agent's SQLite file, the agent's default
 * bounds) is filled with DRAIN_POINTS points (9 inference : 1 health) while
 * no uploader runs; then a TelemetryUploader with the agent's default upload
 * settings (500 points / 256 KiB per batch, one batch in flight, rows deleted
 * on PUBACK) starts on an already connected MqttConnection (MQTT 5,
 * persistent session, as the agent connects), and the clock runs until the
 * ack that leaves the outbox empty.
 *
 * A plain mqtt.js subscriber (QoS 1, this process; it only keeps the payloads
 * while the clock runs) checks afterwards that every seq arrived: count,
 * duplicates, gaps, and every batch through the protocol's schema
 * (parseTelemetryBatch).
 *
 * Baselines, side by side: a plain mqtt.js client (MQTT 5, clean session)
 * publishing byte-for-byte the batches the uploader sends (cut from the
 * outbox's rows by the same rule as lease()) at QoS 1 from memory, no SQLite:
 * one in flight (await each PUBACK, as the uploader does), and all in flight.
 * Runs interleave per round, order rotated; the outbox is refilled (untimed)
 * before each uploader run.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { MqttConnection } from '../agent/mqtt/connection.js';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryOutbox, type OutboxBatch } from '../agent/telemetry/outbox.js';
import type { NewPoint } from '../agent/telemetry/points.js';
import { TelemetryUploader } from '../agent/telemetry/uploader.js';
import { parseTelemetryBatch, topics } from '../protocol/index.js';
import type { Mosquitto } from '../test/helpers/mosquitto.js';
import { waitForQuiet } from './cpu.js';
import { fmt, printTable, type Cell } from './table.js';
import { fsType, healthPoints, inferencePoints, medianOf, pairedRatio, range, silent, sleep, telemetryDefaults } from './telemetry-common.js';

const DRAIN_POINTS = 100_000;
const FILL_CHUNK = 1000;
const TARGET_PPS = 20_000;
/** Longest wait before each timed run for other jobs on the machine to go quiet. */
const QUIET_WAIT_MS = 600;
const ROOT = 'bench-telemetry';
const PLAIN_ROOT = 'bench-telemetry-plain';
const DEVICE = 'bench-drain';

type Sender = 'uploader' | 'plain-1' | 'plain-all';
const LABEL: Record<Sender, string> = {
  uploader: 'TelemetryUploader + outbox (agent)',
  'plain-1': 'plain mqtt.js QoS 1, 1 in flight',
  'plain-all': 'plain mqtt.js QoS 1, all in flight',
};

interface Run {
  points: number;
  /** Uploader only: time inside the outbox's lease, ack and reportDrops (synchronous SQLite; ack commits with an fsync). */
  sqliteS: number;
  batches: number;
  payloadBytes: number;
  /** Start → last PUBACK (uploader: → the ack that emptied the outbox). */
  ackS: number;
  /** Start → the last expected batch at the subscriber. */
  recvS: number;
  check: SeqCheck;
}

interface SeqCheck {
  ok: boolean;
  text: string;
}

/** Collects raw payloads per topic; parsing waits until the clock has stopped. */
class Subscriber {
  private readonly got = new Map<string, { payloads: Buffer[]; at: number[] }>();
  private constructor(readonly client: MqttClient) {}

  static async start(url: string, topicList: string[]): Promise<Subscriber> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 5, clientId: `bench-telemetry-collector-${process.pid}`, clean: true, reconnectPeriod: 200 });
    const sub = new Subscriber(client);
    client.on('message', (topic, payload) => {
      const entry = sub.got.get(topic);
      if (!entry) return;
      entry.payloads.push(payload);
      entry.at.push(performance.now());
    });
    await client.subscribeAsync(topicList, { qos: 1 });
    return sub;
  }

  reset(topic: string): void {
    this.got.set(topic, { payloads: [], at: [] });
  }

  /** Waits until `count` messages arrived on `topic`; the arrival time of the count-th, or NaN on timeout. */
  async waitFor(topic: string, count: number, timeoutMs: number): Promise<number> {
    const until = performance.now() + timeoutMs;
    for (;;) {
      const e = this.got.get(topic);
      if (e && e.payloads.length >= count) return e.at[count - 1] as number;
      if (performance.now() > until) return NaN;
      await sleep(5);
    }
  }

  payloads(topic: string): Buffer[] {
    return this.got.get(topic)?.payloads ?? [];
  }
}

/** Every seq in [from, to] exactly once, and every batch valid under the protocol schema. */
function checkSeqs(payloads: readonly Buffer[], from: number, to: number): SeqCheck {
  const size = to - from + 1;
  const seen = new Uint8Array(size);
  let received = 0;
  let dups = 0;
  let outside = 0;
  let invalid = 0;
  for (const p of payloads) {
    try {
      parseTelemetryBatch(p);
    } catch {
      invalid++;
    }
    for (const point of (JSON.parse(p.toString('utf8')) as { points: { seq: number }[] }).points) {
      received++;
      const i = point.seq - from;
      if (i < 0 || i >= size) outside++;
      else if (seen[i]) dups++;
      else seen[i] = 1;
    }
  }
  let missing = 0;
  let gaps = 0;
  for (let i = 0; i < size; i++) {
    if (seen[i]) continue;
    missing++;
    if (i === 0 || seen[i - 1]) gaps++;
  }
  const ok = missing === 0 && dups === 0 && outside === 0 && invalid === 0;
  const text = `${received} pts, seq ${from}..${to}: ${missing} missing (${gaps} gaps), ${dups} dup, ${outside} stray, ${invalid}/${payloads.length} batches invalid`;
  return { ok, text };
}

/** The batches lease() would cut from these rows: up to batchPoints points and batchBytes bytes (at least one point). */
function cutBatches(rows: readonly { bytes: number; body: string }[], batchPoints: number, batchBytes: number, deviceId: string): string[] {
  const prefix = `{"schema":1,"device":${JSON.stringify(deviceId)},"points":[`;
  const out: string[] = [];
  let bodies: string[] = [];
  let bytes = 0;
  for (const row of rows) {
    if (bodies.length === batchPoints || (bodies.length > 0 && bytes + row.bytes > batchBytes)) {
      out.push(`${prefix}${bodies.join(',')}]}`);
      bodies = [];
      bytes = 0;
    }
    bodies.push(row.body);
    bytes += row.bytes;
  }
  if (bodies.length > 0) out.push(`${prefix}${bodies.join(',')}]}`);
  return out;
}

export async function runDrain(dir: string, broker: Mosquitto, quick: boolean): Promise<Cell[][]> {
  const rounds = quick ? 1 : 3;
  const defaults = telemetryDefaults();
  const { batchPoints, batchBytes } = defaults.upload;
  const drainDir = join(dir, 'drain');
  await mkdir(drainDir, { recursive: true });
  console.log(`\n### 2. Drain: ${DRAIN_POINTS} buffered points over loopback Mosquitto (${broker.url})`);
  console.log(`outbox: ${join(drainDir, 'agent.db')} (${await fsType(drainDir)}), bounds maxRows ${defaults.buffer.maxRows}, maxBytes ${defaults.buffer.maxBytes}; uploader defaults: batchPoints ${batchPoints}, batchBytes ${batchBytes}, debounceMs ${defaults.upload.debounceMs}, ackTimeoutMs ${defaults.upload.ackTimeoutMs}`);
  console.log(`points: 9 inference : 1 health; filled in appends of ${FILL_CHUNK} with no uploader running (untimed); ${rounds} round(s), runs interleaved`);

  const points: NewPoint[] = [];
  const inf = inferencePoints(DRAIN_POINTS, 21);
  const health = healthPoints(DRAIN_POINTS / 10, 22);
  for (let i = 0; i < DRAIN_POINTS; i++) points.push(i % 10 === 9 ? (health[(i - 9) / 10] as NewPoint) : (inf[i] as NewPoint));

  const database = AgentDatabase.open(join(drainDir, 'agent.db'));
  const outbox = new TelemetryOutbox({ database: () => database, ...defaults.buffer, logger: silent });
  await outbox.start();
  const connection = new MqttConnection({ config: { url: broker.url, topicRoot: ROOT, keepaliveS: 30 }, deviceId: DEVICE, logger: silent, stopTimeoutMs: 2000 });
  const agentTopic = topics.device(ROOT, DEVICE, 'telemetry');
  const plainTopic = topics.device(PLAIN_ROOT, DEVICE, 'telemetry');
  let subscriber: Subscriber | undefined;
  let plain: MqttClient | undefined;
  const runs: Record<Sender, Run[]> = { uploader: [], 'plain-1': [], 'plain-all': [] };
  const fills: string[] = [];
  try {
    await connection.start();
    if (!connection.connected) throw new Error('the agent connection did not connect to the bench broker');
    subscriber = await Subscriber.start(broker.url, [agentTopic, plainTopic]);
    plain = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: `bench-telemetry-plain-${process.pid}`, clean: true, reconnectPeriod: 200 });

    const fill = (): { from: number; to: number } => {
      const t0 = performance.now();
      let from = 0;
      let to = 0;
      for (let i = 0; i < points.length; i += FILL_CHUNK) {
        const seqs = outbox.append(points.slice(i, i + FILL_CHUNK));
        if (i === 0) from = seqs[0] as number;
        to = seqs[seqs.length - 1] as number;
      }
      const stats = outbox.stats();
      if (stats.rows !== DRAIN_POINTS || stats.droppedTotal !== 0) throw new Error(`outbox after fill: ${stats.rows} rows, ${stats.droppedTotal} dropped (expected ${DRAIN_POINTS}, 0)`);
      fills.push(`${fmt((performance.now() - t0) / 1000, 2)} s (${fmt(stats.bytes / 1e6, 1)} MB of point JSON)`);
      return { from, to };
    };

    // The plain client's batches: exactly what the uploader will send for the first fill.
    const first = fill();
    const rows = database.db.prepare<[], { bytes: number; body: string }>('SELECT bytes, body FROM telemetry_outbox ORDER BY seq').all();
    const payloads = cutBatches(rows, batchPoints, batchBytes, DEVICE);
    const payloadBytes = payloads.reduce((n, p) => n + Buffer.byteLength(p), 0);
    let filled = true; // the outbox holds a fill not yet drained

    const runUploader = async (): Promise<Run> => {
      const range = filled ? first : fill();
      filled = false;
      subscriber?.reset(agentTopic);
      await waitForQuiet(QUIET_WAIT_MS);
      let batches = 0;
      let sentBytes = 0;
      let emptiedAt = NaN;
      let emptied!: () => void;
      const done = new Promise<void>((resolve) => (emptied = resolve));
      // Observing only: the real methods run unchanged; their time (synchronous SQLite) is summed.
      let sqliteMs = 0;
      const realLease = outbox.lease.bind(outbox);
      const realReport = outbox.reportDrops.bind(outbox);
      outbox.lease = (maxPoints: number, maxBytes: number): OutboxBatch | undefined => {
        const t = performance.now();
        const batch = realLease(maxPoints, maxBytes);
        sqliteMs += performance.now() - t;
        return batch;
      };
      outbox.reportDrops = (): boolean => {
        const t = performance.now();
        const added = realReport();
        sqliteMs += performance.now() - t;
        return added;
      };
      const realAck = outbox.ack.bind(outbox);
      outbox.ack = (batch: OutboxBatch): void => {
        const t = performance.now();
        realAck(batch);
        sqliteMs += performance.now() - t;
        batches++;
        sentBytes += batch.bytes;
        if (outbox.stats().rows === 0) {
          emptiedAt = performance.now();
          emptied();
        }
      };
      const uploader = new TelemetryUploader({ outbox, transport: connection, topicRoot: ROOT, deviceId: DEVICE, logger: silent, ...defaults.upload });
      let timer: NodeJS.Timeout | undefined;
      const t0 = performance.now();
      try {
        await uploader.start();
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`uploader did not empty the outbox within 120 s (${outbox.stats().rows} rows left)`)), 120_000);
        });
        await Promise.race([done, timeout]);
      } finally {
        clearTimeout(timer);
        await uploader.stop();
        // Back to the prototype's methods.
        for (const name of ['ack', 'lease', 'reportDrops'] as const) delete (outbox as Partial<Record<typeof name, unknown>>)[name];
      }
      const recvAt = await (subscriber as Subscriber).waitFor(agentTopic, batches, 15_000);
      const prefixBytes = Buffer.byteLength(`{"schema":1,"device":${JSON.stringify(DEVICE)},"points":[]}`);
      return {
        points: range.to - range.from + 1, batches, payloadBytes: sentBytes + batches * prefixBytes + (DRAIN_POINTS - batches), // commas between points
        sqliteS: sqliteMs / 1000, ackS: (emptiedAt - t0) / 1000, recvS: (recvAt - t0) / 1000, check: checkSeqs((subscriber as Subscriber).payloads(agentTopic), range.from, range.to),
      };
    };

    const runPlain = async (allInFlight: boolean): Promise<Run> => {
      const client = plain as MqttClient;
      subscriber?.reset(plainTopic);
      await waitForQuiet(QUIET_WAIT_MS);
      const t0 = performance.now();
      if (allInFlight) await Promise.all(payloads.map((p) => client.publishAsync(plainTopic, p, { qos: 1 })));
      else for (const p of payloads) await client.publishAsync(plainTopic, p, { qos: 1 });
      const ackAt = performance.now();
      const recvAt = await (subscriber as Subscriber).waitFor(plainTopic, payloads.length, 15_000);
      return {
        points: DRAIN_POINTS, sqliteS: NaN, batches: payloads.length, payloadBytes, ackS: (ackAt - t0) / 1000, recvS: (recvAt - t0) / 1000,
        check: checkSeqs((subscriber as Subscriber).payloads(plainTopic), first.from, first.to),
      };
    };

    const order: Sender[] = ['uploader', 'plain-1', 'plain-all'];
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < order.length; k++) {
        const sender = order[(k + r) % order.length] as Sender;
        runs[sender].push(sender === 'uploader' ? await runUploader() : await runPlain(sender === 'plain-all'));
      }
    }
  } finally {
    await plain?.endAsync().catch(() => undefined);
    await subscriber?.client.endAsync().catch(() => undefined);
    await connection.stop().catch(() => undefined);
    await outbox.stop();
    database.close();
  }

  const pps = (r: Run): number => r.points / r.ackS;
  const senders: Sender[] = ['uploader', 'plain-1', 'plain-all'];
  printTable(
    `Drain of ${DRAIN_POINTS} points (median run; points/s = points ÷ time to the last PUBACK; ratio: median over rounds of uploader ÷ that baseline in the same round)`,
    ['sender', 'batches', 'payload MB', 'to last PUBACK s', 'in SQLite s', 'points/s', 'points/s range', 'all received s', 'ratio uploader ÷ this', 'subscriber check (last run)'],
    senders.map((s) => {
      const list = runs[s];
      const last = list[list.length - 1];
      const allOk = list.every((r) => r.check.ok);
      return [
        LABEL[s], last?.batches, fmt((last?.payloadBytes ?? NaN) / 1e6, 1), fmt(medianOf(list.map((r) => r.ackS)), 2), s === 'uploader' ? fmt(medianOf(list.map((r) => r.sqliteS)), 2) : '-',
        fmt(medianOf(list.map(pps)), 0), range(list.map(pps)),
        fmt(medianOf(list.map((r) => r.recvS)), 2), s === 'uploader' ? '-' : `${fmt(pairedRatio(runs.uploader.map(pps), list.map(pps)))}x`,
        `${allOk ? 'OK' : 'FAILED'}: ${last?.check.text ?? '-'}`,
      ];
    }),
    (i) => i > 0 && i < 9,
  );
  console.log(`fill (untimed, ${FILL_CHUNK} points per append): ${fills.join('; ')}. MB = 10^6 B.`);
  console.log('subscriber: plain mqtt.js, QoS 1, in this process (same as for the baselines); "all received" = the last expected batch arrived there.');
  console.log('in SQLite = time inside the outbox\'s lease (SELECT of a batch), ack (DELETE, commit, fsync) and reportDrops during the drain; the rest is building payloads, MQTT and waiting for PUBACKs.');

  const med = medianOf(runs.uploader.map(pps));
  const checksOk = senders.every((s) => runs[s].every((r) => r.check.ok));
  return [
    [`(2) drain ${DRAIN_POINTS} buffered points, TelemetryUploader → Mosquitto`, `${fmt(med, 0)} points/s`, `≥ ${TARGET_PPS}`, med >= TARGET_PPS ? 'PASS' : 'FAIL'],
    ['    every seq arrived once, no gaps, every batch valid (all runs)', checksOk ? 'yes' : 'NO', 'yes', checksOk ? 'PASS' : 'FAIL'],
    ['    (info) uploader ÷ plain mqtt.js, 1 in flight', `${fmt(pairedRatio(runs.uploader.map(pps), runs['plain-1'].map(pps)))}x`, '', 'info'],
  ];
}
