import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { formatTime } from '../../protocol/index.js';
import type { AgentDatabase } from '../store/database.js';
import { NoSpaceError } from '../store/no-space.js';
import type { DroppedPoint, NewPoint, PointSink } from './points.js';

/**
 * The telemetry outbox: points wait here, in SQLite (WAL, synchronous=FULL),
 * until the batch that carries them is acknowledged: by the broker's PUBACK
 * (telemetry.delivery `broker`, ack()), or by a collector's telemetry ack
 * (`collector`, PROTOCOL.md section 12: acknowledge()), in which case a PUBACK
 * only records when the points were sent (markSent()) and lease() hands out
 * again, in seq order, those sent before a cut-off and still unacknowledged. append()
 * numbers the points from the durable counter and commits them in one
 * transaction, so a point is either stored with its seq or not at all, and a
 * seq is never handed out twice, even across `kill -9` or power loss.
 *
 * While the broker is away the outbox stays within maxRows and maxBytes (the
 * points' JSON bytes) by discarding the oldest points. The discards are
 * counted durably and reported as one "dropped" point (reason 'buffer full')
 * once the uploader can send again. The bounds hold in both delivery modes. Rows leased to the uploader (a batch in flight) are never
 * discarded, so the bounds may be exceeded by at most one batch meanwhile.
 *
 * A full filesystem (agent/store/no-space.ts) never reaches the producers:
 * append() refuses the points (no seq is used), counts them in memory and
 * folds the count into the durable drop counters with the next commit that
 * finds room, so they appear in the next "dropped" point of reason 'no space'
 * (without seqs: they never had any); it logs once per
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

export interface LeaseOptions {
  /**
   * Collector mode: lease only points never sent or sent before this time
   * (epoch ms); without it every point is eligible (broker mode).
   */
  sentBefore?: number;
}

/** A run of the oldest points, handed to the uploader. */
export interface OutboxBatch {
  fromSeq: number;
  toSeq: number;
  /** Each point's seq, in order; in collector mode a batch may skip points sent recently. */
  seqs: number[];
  /** Each point's JSON, seq included, in seq order. */
  bodies: string[];
  bytes: number;
  /** Points in it that were sent before (collector mode: unacknowledged past the cut-off). */
  resent: number;
}

/** What a collector's acknowledgement did (acknowledge()). */
export type AckOutcome =
  /** Rows up to upTo are gone (or, on a full disk, will be with the next commit). */
  | { kind: 'advanced'; upTo: number; deleted: number }
  /** At or below the highest upTo already kept: nothing changes. */
  | { kind: 'stale'; upTo: number; kept: number }
  /** Above every seq this device has issued (its database was reset, or the ack is not for it): ignored. */
  | { kind: 'ahead'; upTo: number; highestIssued: number };

export interface OutboxStats {
  rows: number;
  bytes: number;
  nextSeq: number;
  droppedTotal: number;
  /** Discarded points not yet reported in a "dropped" point. */
  pendingDrops: number;
  /** Highest upTo a collector acknowledged (0 before any). */
  ackedUpTo: number;
}

interface StateRow {
  next_seq: number;
  dropped_total: number;
  pending_count: number;
  pending_from: number | null;
  pending_to: number | null;
  pending_refused: number;
  acked_up_to: number;
}

interface OutboxRow {
  seq: number;
  kind: string;
  bytes: number;
  body: string;
  sent_at: number | null;
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
  lease(maxPoints: number, maxBytes: number, options: LeaseOptions = {}): OutboxBatch | undefined {
    if (this.leasedTo !== 0) throw new Error('a telemetry batch is already leased');
    const s = this.statements();
    let rows: OutboxRow[];
    if (options.sentBefore === undefined) {
      rows = s.oldest.all(this.ackedTo, maxPoints);
    } else {
      // Never sent (an index scan), or sent before the cut-off, merged in seq order. Due rows
      // are read in seq order, which walks past rows sent since: skipped when none is due.
      const unsent = s.oldestUnsent.all(this.ackedTo, maxPoints);
      const oldest = s.oldestSentAt.get(this.ackedTo)?.at ?? null;
      const due = oldest !== null && oldest <= options.sentBefore ? s.oldestDue.all(options.sentBefore, this.ackedTo, maxPoints) : [];
      rows = [...unsent, ...due].sort((a, b) => a.seq - b.seq).slice(0, maxPoints);
    }
    const batch: OutboxBatch = { fromSeq: 0, toSeq: 0, seqs: [], bodies: [], bytes: 0, resent: 0 };
    for (const row of rows) {
      if (batch.bodies.length > 0 && batch.bytes + row.bytes > maxBytes) break;
      batch.seqs.push(row.seq);
      batch.bodies.push(row.body);
      batch.bytes += row.bytes;
      if (row.sent_at !== null) batch.resent++;
    }
    const first = batch.seqs[0];
    if (first === undefined) return undefined;
    batch.fromSeq = first;
    batch.toSeq = batch.seqs[batch.seqs.length - 1] ?? first;
    this.leasedTo = batch.toSeq;
    return batch;
  }

  /**
   * Collector mode: the broker has the leased batch; records when it was
   * sent, so its points go again only once `sentBefore` passes that time, and
   * ends the lease. The rows stay until a collector acknowledges them. A
   * relaxed write: losing it to power loss only means sending again sooner.
   * False when the filesystem is full (the caller waits before sending more).
   */
  markSent(batch: OutboxBatch, at: number): boolean {
    if (this.leasedTo === batch.toSeq) this.leasedTo = 0;
    const database = this.db();
    try {
      database.write(() => database.relaxed(() => this.statements().markSent.run(at, JSON.stringify(batch.seqs))), () => batch.seqs.length * 16);
      return true;
    } catch (err) {
      if (!(err instanceof NoSpaceError)) throw err;
      return false;
    }
  }

  /**
   * Collector mode: a collector has stored every seq at or below `upTo`.
   * Keeps the highest upTo durably and deletes those rows; a lower or equal
   * one changes nothing, and one above every seq issued is refused. On a
   * full disk the rows count as gone (never leased again) and go with a
   * later commit, as in ack().
   */
  acknowledge(upTo: number): AckOutcome {
    const state = this.state();
    const kept = Math.max(state.acked_up_to, this.ackedTo);
    if (upTo <= kept) return { kind: 'stale', upTo, kept };
    const highestIssued = state.next_seq - 1;
    if (upTo > highestIssued) return { kind: 'ahead', upTo, highestIssued };
    const before = this.rows;
    const delta = this.tryTransaction(() => {
      this.statements().setAckedUpTo.run(upTo);
      return this.catchUp(emptyDelta(), upTo);
    });
    if (!delta) {
      this.ackedTo = Math.max(this.ackedTo, upTo);
      return { kind: 'advanced', upTo, deleted: 0 };
    }
    return { kind: 'advanced', upTo, deleted: before - this.rows };
  }

  /** Collector mode: when the earliest sent, unacknowledged point was sent (epoch ms); undefined when none waits. */
  oldestSentAt(): number | undefined {
    return this.statements().oldestSentAt.get(this.ackedTo)?.at ?? undefined;
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
   * Turns the discards counted since the last report into "dropped" points,
   * one per reason (the uploader calls this when it can send). Returns
   * whether it added any.
   */
  reportDrops(): boolean {
    const delta = this.tryTransaction(() => {
      const caughtUp = this.catchUp(emptyDelta(), this.ackedTo);
      const state = this.state();
      if (state.pending_count === 0 && state.pending_refused === 0) return caughtUp;
      this.statements().resetPending.run();
      const ts = formatTime();
      const total = state.dropped_total;
      const points: Omit<DroppedPoint, 'seq'>[] = [];
      if (state.pending_count > 0) {
        points.push({ ts, kind: 'dropped', count: state.pending_count, oldestSeq: state.pending_from ?? 0, newestSeq: state.pending_to ?? 0, reason: 'buffer full', totalDropped: total });
      }
      if (state.pending_refused > 0) {
        points.push({ ts, kind: 'dropped', count: state.pending_refused, oldestSeq: 0, newestSeq: 0, reason: 'no space', totalDropped: total });
      }
      // No eviction for the report itself: it would only be discarded to make room
      // for... the report. The next append brings the table back within bounds.
      return this.insert(points, false, caughtUp);
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
      pendingDrops: state.pending_count + state.pending_refused + this.refused,
      ackedUpTo: Math.max(state.acked_up_to, this.ackedTo),
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
    let refused = pending.pending_refused;
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
          // A report lost too: carry its count (and range) into the next one of its reason.
          const lost = readDropped(row.body);
          if (lost.reason === 'no space') refused += lost.count;
          else {
            count += lost.count;
            from = Math.min(from, lost.oldestSeq);
          }
        } else {
          count++;
          evicted++;
        }
      }
      s.deleteRange.run(floor + 1, last);
    }
    if (rows === this.rows + delta.rows) return; // nothing discarded
    s.addDrops.run({ evicted, count, from, to, refused });
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
    state: db.prepare<[], StateRow>(
      'SELECT next_seq, dropped_total, pending_count, pending_from, pending_to, pending_refused, acked_up_to FROM telemetry_state WHERE id = 1',
    ),
    totals: db.prepare<[], { rows: number; bytes: number }>('SELECT COUNT(*) AS rows, COALESCE(SUM(bytes), 0) AS bytes FROM telemetry_outbox'),
    insert: db.prepare<[number, string, number, string]>('INSERT INTO telemetry_outbox (seq, kind, bytes, body) VALUES (?, ?, ?, ?)'),
    setNextSeq: db.prepare<[number]>('UPDATE telemetry_state SET next_seq = ? WHERE id = 1'),
    oldest: db.prepare<[number, number], OutboxRow>('SELECT seq, kind, bytes, body, sent_at FROM telemetry_outbox WHERE seq > ? ORDER BY seq LIMIT ?'),
    oldestUnsent: db.prepare<[number, number], OutboxRow>(
      'SELECT seq, kind, bytes, body, sent_at FROM telemetry_outbox WHERE sent_at IS NULL AND seq > ? ORDER BY seq LIMIT ?',
    ),
    oldestDue: db.prepare<[number, number, number], OutboxRow>(
      'SELECT seq, kind, bytes, body, sent_at FROM telemetry_outbox WHERE sent_at <= ? AND seq > ? ORDER BY seq LIMIT ?',
    ),
    oldestSentAt: db.prepare<[number], { at: number | null }>('SELECT MIN(sent_at) AS at FROM telemetry_outbox WHERE sent_at IS NOT NULL AND seq > ?'),
    markSent: db.prepare<[number, string]>('UPDATE telemetry_outbox SET sent_at = ? WHERE seq IN (SELECT value FROM json_each(?))'),
    setAckedUpTo: db.prepare<[number]>('UPDATE telemetry_state SET acked_up_to = MAX(acked_up_to, ?) WHERE id = 1'),
    sizeOf: db.prepare<[number, number], { rows: number; bytes: number }>(
      'SELECT COUNT(*) AS rows, COALESCE(SUM(bytes), 0) AS bytes FROM telemetry_outbox WHERE seq BETWEEN ? AND ?',
    ),
    deleteRange: db.prepare<[number, number]>('DELETE FROM telemetry_outbox WHERE seq BETWEEN ? AND ?'),
    addDrops: db.prepare<[{ evicted: number; count: number; from: number | null; to: number | null; refused: number }]>(
      `UPDATE telemetry_state SET dropped_total = dropped_total + @evicted, pending_count = @count,
         pending_from = @from, pending_to = @to, pending_refused = @refused WHERE id = 1`,
    ),
    resetPending: db.prepare('UPDATE telemetry_state SET pending_count = 0, pending_from = NULL, pending_to = NULL, pending_refused = 0 WHERE id = 1'),
    addRefused: db.prepare<[{ count: number }]>(
      'UPDATE telemetry_state SET dropped_total = dropped_total + @count, pending_refused = pending_refused + @count WHERE id = 1',
    ),
  };
}

/** A stored 'dropped' point; those written before revision 2 say fromSeq and no reason. */
function readDropped(body: string): { count: number; oldestSeq: number; reason: string } {
  const p = JSON.parse(body) as { count: number; oldestSeq?: number; fromSeq?: number; reason?: string };
  return { count: p.count, oldestSeq: p.oldestSeq ?? p.fromSeq ?? 0, reason: p.reason ?? 'buffer full' };
}

function emptyDelta(): Delta {
  return { seqs: [], rows: 0, bytes: 0 };
}
