/**
 * telemetry.delivery `collector` (PROTOCOL.md section 12), the outbox and ack
 * rules without a broker: a real SQLite file, the real TelemetryOutbox and
 * TelemetryAckListener. The same rules against Mosquitto, with the uploader:
 * test/telemetry-delivery.test.ts.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { droppedPointSchema, healthPointSchema } from '../protocol/index.js';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryAckListener } from '../agent/telemetry/ack-listener.js';
import { HealthSampler } from '../agent/telemetry/health.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { NewPoint } from '../agent/telemetry/points.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

let dir: string;
let file: string;
const open: AgentDatabase[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-ack-'));
  file = join(dir, 'agent.db');
});
afterEach(async () => {
  for (const db of open.splice(0)) db.close();
  await rm(dir, { recursive: true, force: true });
});

async function openOutbox(limits: { maxRows?: number } = {}): Promise<{ db: AgentDatabase; outbox: TelemetryOutbox }> {
  const db = AgentDatabase.open(file);
  open.push(db);
  const outbox = new TelemetryOutbox({ database: () => db, maxRows: limits.maxRows ?? 10_000, maxBytes: 1 << 30, logger });
  await outbox.start();
  return { db, outbox };
}

const point = (count: number): NewPoint => ({
  ts: new Date().toISOString(),
  kind: 'inference',
  model: 'mnist',
  version: 1,
  intervalS: 10,
  count,
  errors: 0,
  clientErrors: 0,
  latencyMs: { p50: 1, p90: 2, p99: 3, max: 4, mean: 1.5 },
});

const seqsIn = (db: AgentDatabase): number[] =>
  (db.db.prepare('SELECT seq FROM telemetry_outbox ORDER BY seq').all() as { seq: number }[]).map((r) => r.seq);
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Sends what the outbox leases as the uploader does in collector mode, at time `at`. */
function sendAll(outbox: TelemetryOutbox, at: number, sentBefore: number, batchPoints = 4): number[] {
  const sent: number[] = [];
  for (;;) {
    const batch = outbox.lease(batchPoints, 1 << 20, { sentBefore });
    if (!batch) return sent;
    sent.push(...batch.seqs);
    expect(outbox.markSent(batch, at)).toBe(true);
  }
}

/** A logger whose JSON lines the test reads. */
function capture(): { logger: pino.Logger; lines: { msg: string; [k: string]: unknown }[] } {
  const lines: { msg: string; [k: string]: unknown }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as { msg: string });
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

describe('TelemetryOutbox in collector mode', () => {
  it('keeps points after the broker took them; leases again only those sent before the cut-off, merged with unsent ones in seq order', async () => {
    const { db, outbox } = await openOutbox();
    outbox.append(range(1, 10).map(point));
    expect(sendAll(outbox, 1000, 0)).toEqual(range(1, 10));
    expect(seqsIn(db)).toEqual(range(1, 10)); // a PUBACK deletes nothing
    // Sent at 1000: not due before 1000 + timeout.
    expect(outbox.lease(100, 1 << 20, { sentBefore: 999 })).toBeUndefined();
    outbox.append(range(11, 13).map(point));
    // Seqs 5..10 are sent again later than 1..4.
    const first = outbox.lease(4, 1 << 20, { sentBefore: 1000 });
    expect(first?.seqs).toEqual([1, 2, 3, 4]);
    expect(first?.resent).toBe(4);
    if (first) outbox.markSent(first, 5000);
    // Cut-off 1000: due are 5..10 (sent at 1000), never sent are 11..13; 1..4 (sent at 5000) wait.
    const next = outbox.lease(100, 1 << 20, { sentBefore: 1000 });
    expect(next?.seqs).toEqual(range(5, 13));
    expect(next?.resent).toBe(6);
    expect(next?.bodies.map((b) => (JSON.parse(b) as { seq: number }).seq)).toEqual(range(5, 13));
    if (next) outbox.markSent(next, 6000);
    expect(outbox.oldestSentAt()).toBe(5000);
    // Broker mode ignores sent times: every row, oldest first.
    expect(outbox.lease(100, 1 << 20)?.seqs).toEqual(range(1, 13));
  });

  it('an ack deletes seqs at or below upTo only, keeps the highest durably, and a lower or equal one changes nothing', async () => {
    const first = await openOutbox();
    first.outbox.append(range(1, 10).map(point));
    sendAll(first.outbox, 1000, 0);
    expect(first.outbox.acknowledge(4)).toEqual({ kind: 'advanced', upTo: 4, deleted: 4 });
    expect(seqsIn(first.db)).toEqual(range(5, 10));
    expect(first.outbox.acknowledge(3)).toEqual({ kind: 'stale', upTo: 3, kept: 4 });
    expect(first.outbox.acknowledge(4)).toEqual({ kind: 'stale', upTo: 4, kept: 4 });
    expect(seqsIn(first.db)).toEqual(range(5, 10));
    expect(first.outbox.stats()).toMatchObject({ rows: 6, ackedUpTo: 4 });
    first.db.close();

    // Reopened: the kept upTo and every unacknowledged row with its sent time survive.
    const second = await openOutbox();
    expect(second.outbox.stats()).toMatchObject({ rows: 6, ackedUpTo: 4 });
    expect(second.outbox.acknowledge(2)).toMatchObject({ kind: 'stale', kept: 4 });
    expect(second.outbox.lease(100, 1 << 20, { sentBefore: 999 })).toBeUndefined();
    const due = second.outbox.lease(100, 1 << 20, { sentBefore: 1000 });
    expect(due?.seqs).toEqual(range(5, 10));
    second.outbox.release();
    expect(second.outbox.acknowledge(10)).toEqual({ kind: 'advanced', upTo: 10, deleted: 6 });
    expect(seqsIn(second.db)).toEqual([]);
  });

  it('refuses an ack above every seq it issued (a reset database, or not its ack): nothing deleted', async () => {
    const { db, outbox } = await openOutbox();
    outbox.append(range(1, 5).map(point));
    expect(outbox.acknowledge(6)).toEqual({ kind: 'ahead', upTo: 6, highestIssued: 5 });
    expect(seqsIn(db)).toEqual(range(1, 5));
    expect(outbox.stats().ackedUpTo).toBe(0);
    expect(outbox.acknowledge(5)).toMatchObject({ kind: 'advanced', deleted: 5 });
  });

  it('keeps its bound: sent but unacknowledged points are dropped oldest first and reported as buffer full', async () => {
    const { db, outbox } = await openOutbox({ maxRows: 100 });
    outbox.append(range(1, 100).map(point));
    sendAll(outbox, 1000, 0, 50);
    outbox.append(range(101, 130).map(point));
    expect(seqsIn(db)).toEqual(range(31, 130));
    expect(outbox.reportDrops()).toBe(true);
    const body = (db.db.prepare("SELECT body FROM telemetry_outbox WHERE kind = 'dropped'").get() as { body: string }).body;
    const report = droppedPointSchema.parse(JSON.parse(body));
    expect(report).toMatchObject({ seq: 131, count: 30, oldestSeq: 1, newestSeq: 30, reason: 'buffer full' });
    expect(JSON.parse(body)).toMatchObject({ totalDropped: 30 });
    // Unsent points go in seq order: the survivors never sent (101..) before the report (131).
    expect(outbox.lease(5, 1 << 20, { sentBefore: 999 })?.seqs).toEqual(range(101, 105));
  });
});

describe('TelemetryAckListener', () => {
  function listener(outbox: TelemetryOutbox, log: pino.Logger, logIntervalMs = 60_000): TelemetryAckListener {
    return new TelemetryAckListener({
      outbox,
      transport: { subscribe: async () => {}, onMessage: () => () => {} },
      topicRoot: 'edgefleet',
      deviceId: 'pi-001',
      logger: log,
      logIntervalMs,
    });
  }

  it('applies a valid ack; ignores malformed ones, other devices and seqs never issued, saying why, once per interval per kind', async () => {
    const { db, outbox } = await openOutbox();
    outbox.append(range(1, 10).map(point));
    const { logger: log, lines } = capture();
    const acks = listener(outbox, log);
    await acks.start();
    expect(acks.topic).toBe('edgefleet/devices/pi-001/telemetry/ack');

    acks.receive('{"schema":1,"device":"pi-001","upTo":3}');
    expect(seqsIn(db)).toEqual(range(4, 10));

    const warnings = (): string[] => lines.filter((l) => l.level === 40).map((l) => l.msg);
    acks.receive('not json');
    acks.receive('{"schema":1,"device":"pi-001","upTo":-1}');
    acks.receive('{"schema":2,"device":"pi-001","upTo":9}');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatch(/^ignored a malformed telemetry ack on edgefleet\/devices\/pi-001\/telemetry\/ack: /);
    acks.receive('{"schema":1,"device":"pi-002","upTo":9}');
    acks.receive('{"schema":1,"device":"pi-002","upTo":10}');
    expect(warnings()[1]).toBe('ignored a telemetry ack naming device "pi-002" on this device\'s ack topic (edgefleet/devices/pi-001/telemetry/ack)');
    acks.receive('{"schema":1,"device":"pi-001","upTo":50}');
    expect(warnings()[2]).toBe('ignored a telemetry ack up to seq 50: this device has issued seqs only up to 10 (was its state database reset?)');
    expect(warnings()).toHaveLength(3);
    expect(seqsIn(db)).toEqual(range(4, 10));
    acks.receive('{"schema":1,"device":"pi-001","upTo":2}'); // lower: nothing, and nothing to warn about
    expect(seqsIn(db)).toEqual(range(4, 10));
    expect(warnings()).toHaveLength(3);
    await acks.stop();
    acks.receive('{"schema":1,"device":"pi-001","upTo":10}'); // stopped: not applied
    expect(seqsIn(db)).toEqual(range(4, 10));
  });

  it('after the interval logs the next ignored ack with how many were ignored meanwhile', async () => {
    const { outbox } = await openOutbox();
    const { logger: log, lines } = capture();
    const acks = listener(outbox, log, 50);
    await acks.start();
    for (let i = 0; i < 5; i++) acks.receive('{}');
    await new Promise((r) => setTimeout(r, 80));
    acks.receive('{}');
    const warned = lines.filter((l) => l.level === 40);
    expect(warned).toHaveLength(2);
    expect(warned[1]).toMatchObject({ alsoIgnored: 4 });
  });
});

describe('health points carry the outbox figures (section 13)', () => {
  it('outboxRows and outboxBytes are the points waiting', async () => {
    const { outbox } = await openOutbox();
    outbox.append(range(1, 7).map(point));
    const sampler = new HealthSampler({ sink: outbox, outbox, schedule: '*/30 * * * * *', stateDir: dir, timeoutMs: 5000, logger, nvidiaSmi: null });
    const sample = await sampler.sample();
    await sampler.stop();
    expect(sample).toMatchObject({ outboxRows: 7, outboxBytes: outbox.stats().bytes });
    expect(sample.outboxBytes).toBeGreaterThan(7 * 100);
    expect(healthPointSchema.safeParse({ seq: 8, ...sample }).success).toBe(true);
  });
});
