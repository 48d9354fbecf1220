/**
 * Part 1 of the telemetry benchmark: how fast TelemetryOutbox.append stores
 * points in the agent's SQLite file (AgentDatabase.open: WAL,
 * synchronous=FULL), one point per append() and 100 per append(), against
 * plain better-sqlite3 inserting the same JSON rows into a bare table of the
 * same columns (no state row, no bounds, no seq counter in the database)
 * with the same pragmas, one immediate transaction per row or per 100 rows.
 *
 * Both sides do the same per-point work a writer must: JSON.stringify of the
 * point with its seq, Buffer.byteLength, one INSERT. The outbox adds, per
 * append(): reading telemetry_state (next seq; once more for the bounds
 * check), updating next_seq, and its listeners (none here: no uploader).
 * Every commit is an fsync of the WAL, so single-point rates are bounded by
 * the disk's fsync latency on both sides.
 *
 * Scenarios run interleaved (one window each per round, order rotated), each
 * window on an emptied table (rows deleted, WAL checkpointed and truncated,
 * outside the timing). A window stops early at WINDOW_MAX_POINTS so the
 * outbox never reaches its bounds (eviction is not what is measured here).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { AgentDatabase } from '../agent/store/database.js';
import { TelemetryOutbox } from '../agent/telemetry/outbox.js';
import type { NewPoint } from '../agent/telemetry/points.js';
import { waitForQuiet } from './cpu.js';
import { fmt, printTable, type Cell } from './table.js';
import { fsType, healthPoints, inferencePoints, medianOf, pairedRatio, range, silent, telemetryDefaults } from './telemetry-common.js';

const WINDOW_MAX_POINTS = 80_000;
const POOL = 1000;

interface IngestTiming {
  windowMs: number;
  rounds: number;
  quietWaitMs: number;
}

interface Writer {
  append(points: readonly NewPoint[]): void;
  reset(): Promise<void>;
}

interface Scenario {
  impl: 'outbox' | 'sqlite';
  kind: 'inference' | 'health';
  per: number;
  writer: Writer;
  pool: readonly NewPoint[];
  /** points/s per round */
  pps: number[];
  /** µs per append call (one transaction) per round */
  usPerCall: number[];
  bytesPerPoint: number;
}

/** The baseline: plain better-sqlite3, same pragmas as AgentDatabase.open, a bare table of the same columns. */
function plainSqlite(file: string): Writer & { close(): void } {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  db.exec('CREATE TABLE IF NOT EXISTS points (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, bytes INTEGER NOT NULL, body TEXT NOT NULL)');
  const insert = db.prepare<[number, string, number, string]>('INSERT INTO points (seq, kind, bytes, body) VALUES (?, ?, ?, ?)');
  let seq = 1;
  const write = db.transaction((points: readonly NewPoint[]) => {
    for (const point of points) {
      const body = JSON.stringify({ seq, ...point });
      insert.run(seq, point.kind, Buffer.byteLength(body), body);
      seq++;
    }
  });
  return {
    append: (points) => write.immediate(points),
    async reset() {
      db.exec('DELETE FROM points');
      db.pragma('wal_checkpoint(TRUNCATE)');
    },
    close: () => db.close(),
  };
}

function outboxWriter(database: AgentDatabase): Writer & { outbox: TelemetryOutbox; start(): Promise<void> } {
  const defaults = telemetryDefaults();
  const outbox = new TelemetryOutbox({ database: () => database, ...defaults.buffer, logger: silent });
  return {
    outbox,
    start: () => outbox.start(),
    append: (points) => outbox.append(points),
    async reset() {
      // The outbox keeps its row and byte totals in memory: restart it after emptying the table.
      await outbox.stop();
      database.db.exec('DELETE FROM telemetry_outbox');
      database.db.pragma('wal_checkpoint(TRUNCATE)');
      await outbox.start();
    },
  };
}

async function measureWindow(s: Scenario, windowMs: number, round: number): Promise<void> {
  await s.writer.reset();
  const batches: NewPoint[][] = [];
  for (let i = 0; i < s.pool.length; i += s.per) batches.push(s.pool.slice(i, i + s.per));
  if (s.per === 1) batches.length = Math.min(batches.length, POOL);
  let calls = 0;
  let points = 0;
  let b = round; // start each round elsewhere in the pool
  const t0 = performance.now();
  const until = t0 + windowMs;
  let now = t0;
  while (now < until && points < WINDOW_MAX_POINTS) {
    const batch = batches[b++ % batches.length] as NewPoint[];
    s.writer.append(batch);
    calls++;
    points += batch.length;
    now = performance.now();
  }
  const elapsedS = (now - t0) / 1000;
  s.pps.push(points / elapsedS);
  s.usPerCall.push((elapsedS * 1e6) / calls);
}

export async function runIngest(dir: string, quick: boolean): Promise<Cell[][]> {
  const timing: IngestTiming = quick ? { windowMs: 350, rounds: 1, quietWaitMs: 500 } : { windowMs: 500, rounds: 3, quietWaitMs: 1000 };
  const ingestDir = join(dir, 'ingest');
  await mkdir(ingestDir, { recursive: true });
  console.log(`\n### 1. Outbox ingest: TelemetryOutbox.append vs plain better-sqlite3 (same pragmas: WAL, synchronous=FULL)`);
  console.log(`SQLite files in ${ingestDir} (${await fsType(ingestDir)}); ${timing.rounds} round(s) x ${timing.windowMs} ms per scenario, interleaved, table emptied before each window; window capped at ${WINDOW_MAX_POINTS} points`);

  const database = AgentDatabase.open(join(ingestDir, 'agent.db'));
  const plain = plainSqlite(join(ingestDir, 'plain.db'));
  const outbox = outboxWriter(database);
  await outbox.start();
  const pools = { inference: inferencePoints(POOL * 20, 11), health: healthPoints(POOL * 20, 12) };
  const bytesOf = (pool: readonly NewPoint[]): number => medianOf(pool.slice(0, 200).map((p) => Buffer.byteLength(JSON.stringify({ seq: 123_456, ...p }))));
  const scenarios: Scenario[] = [];
  for (const per of [1, 100]) {
    for (const kind of ['inference', 'health'] as const) {
      for (const impl of ['outbox', 'sqlite'] as const) {
        scenarios.push({ impl, kind, per, writer: impl === 'outbox' ? outbox : plain, pool: pools[kind], pps: [], usPerCall: [], bytesPerPoint: bytesOf(pools[kind]) });
      }
    }
  }
  try {
    // Warm-up: statements prepared, pages cached, JIT warm.
    for (const s of scenarios) await measureWindow(s, 100, 0);
    for (const s of scenarios) {
      s.pps.length = 0;
      s.usPerCall.length = 0;
    }
    for (let r = 0; r < timing.rounds; r++) {
      await waitForQuiet(timing.quietWaitMs);
      for (let k = 0; k < scenarios.length; k++) await measureWindow(scenarios[(k + r) % scenarios.length] as Scenario, timing.windowMs, r);
    }
    const stats = outbox.outbox.stats();
    if (stats.droppedTotal !== 0) throw new Error(`the outbox discarded ${stats.droppedTotal} points during the ingest benchmark`);
  } finally {
    await outbox.outbox.stop();
    database.close();
    plain.close();
  }

  const baselineOf = (s: Scenario): Scenario | undefined => scenarios.find((b) => b.impl === 'sqlite' && b.kind === s.kind && b.per === s.per);
  printTable(
    'Outbox ingest (points/s: median window; ratio: median over rounds of outbox ÷ plain SQLite in the same round)',
    ['writer', 'kind', 'points/append', 'JSON B/point', 'points/s', 'points/s range', 'µs/append', 'ratio vs plain'],
    scenarios.map((s) => [
      s.impl === 'outbox' ? 'TelemetryOutbox.append' : 'plain better-sqlite3 (baseline)',
      s.kind,
      s.per,
      fmt(s.bytesPerPoint, 0),
      fmt(medianOf(s.pps), 0),
      range(s.pps),
      fmt(medianOf(s.usPerCall), 0),
      s.impl === 'outbox' ? `${fmt(pairedRatio(s.pps, baselineOf(s)?.pps ?? []))}x` : '-',
    ]),
    (i) => i > 1,
  );
  console.log('µs/append = one transaction (one WAL fsync at synchronous=FULL) including its points\' JSON.stringify.');
  const single = scenarios.find((s) => s.impl === 'outbox' && s.per === 1 && s.kind === 'inference');
  const batched = scenarios.find((s) => s.impl === 'outbox' && s.per === 100 && s.kind === 'inference');
  return [
    ['(info) outbox ingest, inference points, 1 per append', `${fmt(medianOf(single?.pps ?? []), 0)} points/s (${fmt(pairedRatio(single?.pps ?? [], baselineOf(single as Scenario)?.pps ?? []))}x plain)`, '', 'info'],
    ['(info) outbox ingest, inference points, 100 per append', `${fmt(medianOf(batched?.pps ?? []), 0)} points/s (${fmt(pairedRatio(batched?.pps ?? [], baselineOf(batched as Scenario)?.pps ?? []))}x plain)`, '', 'info'],
  ];
}
