import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { formatTime } from '../../protocol/index.js';
import type { AgentDatabase } from '../store/database.js';
import { NoSpaceError } from '../store/no-space.js';
import type { DroppedPoint, NewPoint, PointSink } from './points.js';

/**
 * The telemetry outbox: points wait here, in SQLite (WAL, synchronous=FULL),
 * until the broker has acknowledged the batch that carries them. append()
 * numbers the points from the durable counter and commits them in one
 * transaction, so a point is either stored with its seq or not at all, and a
 * seq is never handed out twice, even across `kill -9` or power loss.
 *
 * While the broker is away the outbox stays within maxRows and maxBytes (the
 * points' JSON bytes) by discarding the oldest points. The discards are
 * counted durably and reported as one "dropped" point once the uploader can
 * send again. Rows leased to the uploader (a batch in flight) are never
 * discarded, so the bounds may be exceeded by at most one batch meanwhile.
 *
 * A full filesystem (agent/store/no-space.ts) never reaches the producers:
 * append() refuses the points (no seq is used), counts them in memory and
 * folds the count into the durable drop counters with the next commit that
 * finds room, so they appear in the next "dropped" point; it logs once per
 * episode. A batch the broker acknowledged whose rows cannot be deleted is
 * remembered as sent and deleted with a later commit. Points stored before
 * stay stored: nothing acknowledged to a producer is lost.
 */

export interface TelemetryOutboxOptions {
  /** The agent database; a function because the database opens in an earlier start step. */
  database: () => AgentDatabase;
  maxRows: number;
  maxBytes: number;
  logger: Logger;
}

/** A run of the oldest points, handed to the uploader. */
export interface OutboxBatch {
  fromSeq: number;
  toSeq: number;
  /** Each point's JSON, seq included, in seq order. */
  bodies: string[];
  bytes: number;
}

export interface OutboxStats {
  rows: number;
  bytes: number;
  nextSeq: number;
  droppedTotal: number;
  /** Discarded points not yet reported in a "dropped" point. */
  pendingDrops: number;
}

interface StateRow {
  next_seq: number;
  dropped_total: number;
  pending_count: number;
  pending_from: number | null;
  pending_to: number | null;
}

interface OutboxRow {
  seq: number;
  kind: string;
  bytes: number;
  body: string;
}

/** How a transaction changed the table, applied to the in-memory totals after it commits. */
interface Delta {
  seqs: number[];
  rows: number;
  bytes: number;
  /** Refused points it counted durably; ackedTo it caught up with. */
  refused?: number;
  acked?: number;
}

const EVICT_CHUNK = 256;

export class TelemetryOutbox implements PointSink {
  private database: AgentDatabase | undefined;
  private stmts: ReturnType<typeof prepare> | undefined;
  /** Totals kept in memory so bounds checks need no full scan. */
  private rows = 0;
  private bytes = 0;
  /** Highest seq leased to the uploader; 0 when no batch is in flight. */
  private leasedTo = 0;
  /** Points refused for lack of space, not yet in the durable drop counters. */
  private refused = 0;
  /** Highest seq the broker acknowledged whose row could not be deleted for lack of space; 0 when none. */
  private ackedTo = 0;
  /** Set while the filesystem is full (the first failure), so it is logged once. */
  private full: NoSpaceError | undefined;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly options: TelemetryOutboxOptions) {}

  async start(): Promise<void> {
    this.database = this.options.database();
    const db = this.database.db;
    this.stmts = prepare(db);
    const totals = this.stmts.totals.get() ?? { rows: 0, bytes: 0 };
    this.rows = totals.rows;
    this.bytes = totals.bytes;
  }

  async stop(): Promise<void> {
    this.listeners.clear();
    this.stmts = undefined;
    this.database = undefined;
  }

  /** Calls `listener` after every append (the uploader's cue to send). */
  onAppend(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Numbers and stores `points`; they are committed when this returns.
   * Returns their seqs, or none when the filesystem is full: then the points
   * are counted as dropped.
   */
  append(points: readonly NewPoint[]): number[] {
    if (points.length === 0) return [];
    const delta = this.tryTransaction(() => this.insert(points), () => Buffer.byteLength(JSON.stringify(points)));
    if (!delta) {
      this.refused += points.length;
      return [];
    }
    for (const listener of this.listeners) listener();
    return delta.seqs;
  }

  /**
   * Leases the oldest points, up to maxPoints and maxBytes (at least one
   * point), to the caller until ack() or release(). One lease at a time.
   */
  lease(maxPoints: number, maxBytes: number): OutboxBatch | undefined {
    if (this.leasedTo !== 0) throw new Error('a telemetry batch is already leased');
    const rows = this.statements().oldest.all(this.ackedTo, maxPoints);
    const bodies: string[] = [];
    let bytes = 0;
    let toSeq = 0;
    for (const row of rows) {
      if (bodies.length > 0 && bytes + row.bytes > maxBytes) break;
      bodies.push(row.body);
      bytes += row.bytes;
      toSeq = row.seq;
    }
    const first = rows[0];
    if (!first) return undefined;
    this.leasedTo = toSeq;
    return { fromSeq: first.seq, toSeq, bodies, bytes };
  }

  /**
   * Deletes a leased batch: call only once the broker has acknowledged it.
   * Without room to delete, the batch counts as sent (never leased again)
   * and its rows go with a later commit.
   */
  ack(batch: OutboxBatch): void {
    // Every row up to toSeq is in this batch or was acknowledged before (see ackedTo).
    const delta = this.tryTransaction(() => this.catchUp(emptyDelta(), batch.toSeq));
    if (!delta) this.ackedTo = Math.max(this.ackedTo, batch.toSeq);
    if (this.leasedTo === batch.toSeq) this.leasedTo = 0;
  }

  /** Gives a leased batch back unsent; its points stay for the next attempt. */
  release(): void {
    this.leasedTo = 0;
  }

  /**
   * Turns the discards counted since the last report into a "dropped" point
   * (the uploader calls this when it can send). Returns whether it added one.
   */
  reportDrops(): boolean {
    const delta = this.tryTransaction(() => {
      const caughtUp = this.catchUp(emptyDelta(), this.ackedTo);
      const state = this.state();
      if (state.pending_count === 0) return caughtUp;
      this.statements().resetPending.run();
      const point: Omit<DroppedPoint, 'seq'> = {
        ts: formatTime(),
        kind: 'dropped',
        count: state.pending_count,
        fromSeq: state.pending_from ?? 0,
        toSeq: state.pending_to ?? 0,
        totalDropped: state.dropped_total,
      };
      // No eviction for the report itself: it would only be discarded to make room
      // for... the report. The next append brings the table back within bounds.
      return this.insert([point], false, caughtUp);
    });
    return (delta?.seqs.length ?? 0) > 0;
  }

  /** Counters as committed, plus the points refused for lack of space since. */
  stats(): OutboxStats {
    const state = this.state();
    return {
      rows: this.rows,
      bytes: this.bytes,
      nextSeq: state.next_seq,
      droppedTotal: state.dropped_total + this.refused,
      pendingDrops: state.pending_count + this.refused,
    };
  }

  /**
   * Runs `fn` in an immediate transaction and applies its delta once
   * committed. Undefined when the filesystem is full: logged once, and the
   * caller keeps what it could not write in memory.
   */
  private tryTransaction(fn: () => Delta, bytes?: () => number): Delta | undefined {
    const database = this.db();
    let delta: Delta;
    try {
      delta = database.write(() => database.db.transaction(fn).immediate(), bytes);
    } catch (err) {
      if (!(err instanceof NoSpaceError)) throw err;
      if (!this.full) this.options.logger.warn({ err: err.message }, 'no room for telemetry: new points are dropped and counted until there is');
      this.full = err;
      return undefined;
    }
    this.rows += delta.rows;
    this.bytes += delta.bytes;
    this.refused -= delta.refused ?? 0;
    if ((delta.acked ?? 0) >= this.ackedTo) this.ackedTo = 0;
    if (this.full) {
      this.options.logger.info({ droppedMeanwhile: delta.refused ?? 0 }, 'room for telemetry again');
      this.full = undefined;
    }
    return delta;
  }

  /**
   * In a transaction: what a full filesystem kept back. Refused points join
   * the durable drop counters; rows the broker acknowledged up to `ackedTo`
   * are deleted.
   */
  private catchUp(delta: Delta, ackedTo: number): Delta {
    const s = this.statements();
    if (this.refused > 0) {
      s.addRefused.run({ count: this.refused });
      delta.refused = this.refused;
    }
    if (ackedTo > 0) {
      const gone = s.sizeOf.get(0, ackedTo) ?? { rows: 0, bytes: 0 };
      s.deleteRange.run(0, ackedTo);
      delta.rows -= gone.rows;
      delta.bytes -= gone.bytes;
      delta.acked = ackedTo;
    }
    return delta;
  }

  private insert(points: readonly NewPoint[], evict = true, caughtUp?: Delta): Delta {
    const s = this.statements();
    const delta = caughtUp ?? this.catchUp(emptyDelta(), this.ackedTo);
    let seq = this.state().next_seq;
    for (const point of points) {
      const body = JSON.stringify({ seq, ...point });
      const bytes = Buffer.byteLength(body);
      s.insert.run(seq, point.kind, bytes, body);
      delta.seqs.push(seq);
      delta.rows++;
      delta.bytes += bytes;
      seq++;
    }
    s.setNextSeq.run(seq);
    if (evict) this.evict(delta);
    return delta;
  }

  /**
   * Discards the oldest unleased points until the table is within bounds,
   * counting them (and folding discarded "dropped" points into the pending
   * report) in the same transaction.
   */
  private evict(delta: Delta): void {
    const { maxRows, maxBytes } = this.options;
    const s = this.statements();
    // Rows leased (a batch in flight) or already acknowledged are never discarded.
    const floor = Math.max(this.leasedTo, delta.acked === undefined ? this.ackedTo : 0);
    let rows = this.rows + delta.rows;
    let bytes = this.bytes + delta.bytes;
    let evicted = 0;
    const pending = this.state();
    let from = pending.pending_from;
    let to = pending.pending_to;
    let count = pending.pending_count;
    while (rows > maxRows || bytes > maxBytes) {
      const chunk = s.oldest.all(floor, EVICT_CHUNK);
      if (chunk.length === 0) break; // everything left is leased
      let last = 0;
      for (const row of chunk) {
        if (rows <= maxRows && bytes <= maxBytes) break;
        rows--;
        bytes -= row.bytes;
        last = row.seq;
        from = Math.min(from ?? row.seq, row.seq);
        to = Math.max(to ?? row.seq, row.seq);
        if (row.kind === 'dropped') {
          // A report lost too: carry its count and range into the next one.
          const lost = JSON.parse(row.body) as DroppedPoint;
          count += lost.count;
          from = Math.min(from, lost.fromSeq);
        } else {
          count++;
          evicted++;
        }
      }
      s.deleteRange.run(floor + 1, last);
    }
    if (rows === this.rows + delta.rows) return; // nothing discarded
    s.addDrops.run({ evicted, count, from, to });
    delta.rows = rows - this.rows;
    delta.bytes = bytes - this.bytes;
    if (pending.pending_count === 0) {
      this.options.logger.warn({ maxRows, maxBytes }, 'telemetry buffer full; discarding the oldest points');
    }
  }

  private state(): StateRow {
    const row = this.statements().state.get();
    if (!row) throw new Error('telemetry_state row is missing');
    return row;
  }

  private db(): AgentDatabase {
    if (!this.database) throw new Error('telemetry outbox is not started');
    return this.database;
  }

  private statements(): ReturnType<typeof prepare> {
    if (!this.stmts) throw new Error('telemetry outbox is not started');
    return this.stmts;
  }
}

function prepare(db: Database.Database) {
  return {
    state: db.prepare<[], StateRow>('SELECT next_seq, dropped_total, pending_count, pending_from, pending_to FROM telemetry_state WHERE id = 1'),
    totals: db.prepare<[], { rows: number; bytes: number }>('SELECT COUNT(*) AS rows, COALESCE(SUM(bytes), 0) AS bytes FROM telemetry_outbox'),
    insert: db.prepare<[number, string, number, string]>('INSERT INTO telemetry_outbox (seq, kind, bytes, body) VALUES (?, ?, ?, ?)'),
    setNextSeq: db.prepare<[number]>('UPDATE telemetry_state SET next_seq = ? WHERE id = 1'),
    oldest: db.prepare<[number, number], OutboxRow>('SELECT seq, kind, bytes, body FROM telemetry_outbox WHERE seq > ? ORDER BY seq LIMIT ?'),
    sizeOf: db.prepare<[number, number], { rows: number; bytes: number }>(
      'SELECT COUNT(*) AS rows, COALESCE(SUM(bytes), 0) AS bytes FROM telemetry_outbox WHERE seq BETWEEN ? AND ?',
    ),
    deleteRange: db.prepare<[number, number]>('DELETE FROM telemetry_outbox WHERE seq BETWEEN ? AND ?'),
    addDrops: db.prepare<[{ evicted: number; count: number; from: number | null; to: number | null }]>(
      `UPDATE telemetry_state SET dropped_total = dropped_total + @evicted, pending_count = @count,
         pending_from = @from, pending_to = @to WHERE id = 1`,
    ),
    resetPending: db.prepare('UPDATE telemetry_state SET pending_count = 0, pending_from = NULL, pending_to = NULL WHERE id = 1'),
    addRefused: db.prepare<[{ count: number }]>(
      'UPDATE telemetry_state SET dropped_total = dropped_total + @count, pending_count = pending_count + @count WHERE id = 1',
    ),
  };
}

function emptyDelta(): Delta {
  return { seqs: [], rows: 0, bytes: 0 };
}
