/**
 * Where the built-in alert evaluator keeps its state (fleet/alerts/): each
 * alert pending, firing or recently resolved, the webhook notifications
 * not yet delivered (an outbox), and the lease that lets one collector at a
 * time evaluate. Both backends, behind one interface.
 *
 * A tick's changes and the notifications they cause are written in one
 * transaction, so a restart neither fires an alert again nor forgets one,
 * and a notification stays in the outbox until its receiver took it.
 */
import type Database from 'better-sqlite3';
import type pg from 'pg';
import type { AlertNotification, AlertState } from '../alerts/evaluator.js';
import { postgresLease, sqliteLease, type Lease } from './leases.js';
import { inTransaction } from './pg-transaction.js';

/** A notification waiting for one receiver. */
export interface OutboxEntry {
  id: number;
  receiver: string;
  notification: AlertNotification;
  /** Epoch ms. */
  createdAt: number;
  attempts: number;
  /** Not sent again before this (epoch ms). */
  nextAt: number;
  /** The receiver refused it for good (a 4xx other than 408 and 429): kept to be seen, not sent again. */
  failed: boolean;
  lastError: string | null;
}

/** Per receiver: notifications waiting, and those refused for good. */
export interface OutboxSummary {
  receiver: string;
  waiting: number;
  failed: number;
  oldestAt: number;
  lastError: string | null;
}

export interface TickChanges {
  changed: readonly AlertState[];
  dropped: readonly string[];
  outbox: readonly { receiver: string; notification: AlertNotification }[];
  now: number;
  /** Resolved alerts and failed notifications older than this (epoch ms) are deleted. */
  forgetBefore: number;
}

export interface AlertRecords extends Lease {
  /** Alerts pending or firing. */
  active(): Promise<AlertState[]>;
  /** Resolved alerts, newest first. */
  resolved(limit: number): Promise<AlertState[]>;
  /** A tick's changes and notifications, in one transaction. */
  record(changes: TickChanges): Promise<void>;
  /**
   * The receiver's oldest undelivered notifications, in the order they were
   * queued, up to `limit`; none while the oldest waits for its retry time
   * (so a receiver hears of an alert's firing before its resolving).
   */
  due(receiver: string, now: number, limit: number): Promise<OutboxEntry[]>;
  delivered(ids: readonly number[]): Promise<void>;
  /** Failed for now: tried again from `nextAt`. */
  retryAt(ids: readonly number[], nextAt: number, error: string): Promise<void>;
  /** Refused for good. */
  refused(ids: readonly number[], error: string): Promise<void>;
  outbox(): Promise<OutboxSummary[]>;
}

export const SQLITE_ALERT_MIGRATION = `
  CREATE TABLE fleet_alerts (fingerprint TEXT PRIMARY KEY, state TEXT NOT NULL, resolved_at INTEGER, doc TEXT NOT NULL);
  CREATE INDEX fleet_alerts_state ON fleet_alerts (state, resolved_at);
  CREATE TABLE fleet_alert_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, receiver TEXT NOT NULL, created_at INTEGER NOT NULL, next_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, last_error TEXT, doc TEXT NOT NULL
  );
  CREATE INDEX fleet_alert_outbox_receiver ON fleet_alert_outbox (receiver, failed, id);`;

export const POSTGRES_ALERT_MIGRATION = `
  CREATE TABLE fleet_alerts (fingerprint text PRIMARY KEY, state text NOT NULL, resolved_at bigint, doc jsonb NOT NULL);
  CREATE INDEX fleet_alerts_state ON fleet_alerts (state, resolved_at);
  CREATE TABLE fleet_alert_outbox (
    id bigserial PRIMARY KEY, receiver text NOT NULL, created_at bigint NOT NULL, next_at bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0, failed boolean NOT NULL DEFAULT false, last_error text, doc jsonb NOT NULL
  );
  CREATE INDEX fleet_alert_outbox_receiver ON fleet_alert_outbox (receiver, failed, id);`;

const LEASE = 'alert-evaluator';
/** Any constant other than the rollout controller's: the advisory lock the evaluating collector holds. */
const EVALUATOR_LOCK = 0x6566616c;

type OutboxRow = {
  id: number | string; receiver: string; created_at: number | string; next_at: number | string; attempts: number;
  failed: number | boolean; last_error: string | null; doc: string | AlertNotification;
};
type SummaryRow = { receiver: string; waiting: number | string; failed: number | string; oldest_at: number | string; last_error: string | null };

const json = <T>(doc: string | T): T => (typeof doc === 'string' ? (JSON.parse(doc) as T) : doc);

function entryOf(r: OutboxRow): OutboxEntry {
  return {
    id: Number(r.id), receiver: r.receiver, notification: json<AlertNotification>(r.doc), createdAt: Number(r.created_at),
    nextAt: Number(r.next_at), attempts: Number(r.attempts), failed: r.failed === true || r.failed === 1, lastError: r.last_error,
  };
}

/** Cuts `rows` (one receiver's, oldest first) where the first one not yet due stands. */
function dueOnly(rows: OutboxRow[], now: number): OutboxEntry[] {
  const out: OutboxEntry[] = [];
  for (const r of rows) {
    if (Number(r.next_at) > now) break;
    out.push(entryOf(r));
  }
  return out;
}

function summaryOf(r: SummaryRow): OutboxSummary {
  return { receiver: r.receiver, waiting: Number(r.waiting), failed: Number(r.failed), oldestAt: Number(r.oldest_at), lastError: r.last_error };
}

export function sqliteAlerts(db: Database.Database): AlertRecords {
  const sql = {
    active: db.prepare<[], { doc: string }>(`SELECT doc FROM fleet_alerts WHERE state IN ('pending', 'firing')`),
    resolved: db.prepare<[number], { doc: string }>(`SELECT doc FROM fleet_alerts WHERE state = 'resolved' ORDER BY resolved_at DESC, fingerprint LIMIT ?`),
    upsert: db.prepare(
      `INSERT INTO fleet_alerts (fingerprint, state, resolved_at, doc) VALUES (?, ?, ?, ?)
       ON CONFLICT (fingerprint) DO UPDATE SET state = excluded.state, resolved_at = excluded.resolved_at, doc = excluded.doc`,
    ),
    drop: db.prepare('DELETE FROM fleet_alerts WHERE fingerprint = ?'),
    queue: db.prepare('INSERT INTO fleet_alert_outbox (receiver, created_at, next_at, doc) VALUES (?, ?, ?, ?)'),
    forgetAlerts: db.prepare(`DELETE FROM fleet_alerts WHERE state = 'resolved' AND resolved_at < ?`),
    forgetFailed: db.prepare('DELETE FROM fleet_alert_outbox WHERE failed = 1 AND created_at < ?'),
    due: db.prepare<[string, number], OutboxRow>('SELECT * FROM fleet_alert_outbox WHERE receiver = ? AND failed = 0 ORDER BY id LIMIT ?'),
    delivered: db.prepare('DELETE FROM fleet_alert_outbox WHERE id = ?'),
    retry: db.prepare('UPDATE fleet_alert_outbox SET attempts = attempts + 1, next_at = ?, last_error = ? WHERE id = ?'),
    refused: db.prepare('UPDATE fleet_alert_outbox SET attempts = attempts + 1, failed = 1, last_error = ? WHERE id = ?'),
    outbox: db.prepare<[], SummaryRow>(
      `SELECT receiver, sum(failed = 0) AS waiting, sum(failed) AS failed, min(created_at) AS oldest_at,
         (SELECT last_error FROM fleet_alert_outbox o WHERE o.receiver = f.receiver AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1) AS last_error
       FROM fleet_alert_outbox f GROUP BY receiver ORDER BY receiver`,
    ),
  };
  const each = (ids: readonly number[], fn: (id: number) => void): void => db.transaction(() => ids.forEach(fn))();
  return {
    ...sqliteLease(db, LEASE),
    async active() {
      return sql.active.all().map((r) => json<AlertState>(r.doc));
    },
    async resolved(limit) {
      return sql.resolved.all(limit).map((r) => json<AlertState>(r.doc));
    },
    async record(c) {
      db.transaction(() => {
        for (const a of c.changed) sql.upsert.run(a.fingerprint, a.state, a.resolvedAt, JSON.stringify(a));
        for (const f of c.dropped) sql.drop.run(f);
        for (const o of c.outbox) sql.queue.run(o.receiver, c.now, c.now, JSON.stringify(o.notification));
        sql.forgetAlerts.run(c.forgetBefore);
        sql.forgetFailed.run(c.forgetBefore);
      }).immediate();
    },
    async due(receiver, now, limit) {
      return dueOnly(sql.due.all(receiver, limit), now);
    },
    async delivered(ids) {
      each(ids, (id) => sql.delivered.run(id));
    },
    async retryAt(ids, nextAt, error) {
      each(ids, (id) => sql.retry.run(nextAt, error, id));
    },
    async refused(ids, error) {
      each(ids, (id) => sql.refused.run(error, id));
    },
    async outbox() {
      return sql.outbox.all().map(summaryOf);
    },
  };
}

export function postgresAlerts(pool: pg.Pool, onLost: (err: Error) => void): AlertRecords & { close(): Promise<void> } {
  return {
    ...postgresLease(pool, EVALUATOR_LOCK, onLost),
    async active() {
      const { rows } = await pool.query<{ doc: AlertState }>(`SELECT doc FROM fleet_alerts WHERE state IN ('pending', 'firing')`);
      return rows.map((r) => r.doc);
    },
    async resolved(limit) {
      const { rows } = await pool.query<{ doc: AlertState }>(
        `SELECT doc FROM fleet_alerts WHERE state = 'resolved' ORDER BY resolved_at DESC, fingerprint LIMIT $1`,
        [limit],
      );
      return rows.map((r) => r.doc);
    },
    async record(c) {
      await inTransaction(pool, async (client) => {
        // One statement per kind of change, whatever their number: unnest the arrays.
        if (c.changed.length > 0) {
          await client.query(
            `INSERT INTO fleet_alerts (fingerprint, state, resolved_at, doc)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::jsonb[])
             ON CONFLICT (fingerprint) DO UPDATE SET state = excluded.state, resolved_at = excluded.resolved_at, doc = excluded.doc`,
            [c.changed.map((a) => a.fingerprint), c.changed.map((a) => a.state), c.changed.map((a) => a.resolvedAt), c.changed.map((a) => JSON.stringify(a))],
          );
        }
        if (c.dropped.length > 0) await client.query('DELETE FROM fleet_alerts WHERE fingerprint = ANY($1)', [c.dropped]);
        if (c.outbox.length > 0) {
          await client.query(
            `INSERT INTO fleet_alert_outbox (receiver, created_at, next_at, doc)
             SELECT r, $2::bigint, $2::bigint, d FROM unnest($1::text[], $3::jsonb[]) WITH ORDINALITY AS o(r, d, n) ORDER BY n`,
            [c.outbox.map((o) => o.receiver), c.now, c.outbox.map((o) => JSON.stringify(o.notification))],
          );
        }
        await client.query(`DELETE FROM fleet_alerts WHERE state = 'resolved' AND resolved_at < $1`, [c.forgetBefore]);
        await client.query('DELETE FROM fleet_alert_outbox WHERE failed AND created_at < $1', [c.forgetBefore]);
      });
    },
    async due(receiver, now, limit) {
      const { rows } = await pool.query<OutboxRow>('SELECT * FROM fleet_alert_outbox WHERE receiver = $1 AND NOT failed ORDER BY id LIMIT $2', [receiver, limit]);
      return dueOnly(rows, now);
    },
    async delivered(ids) {
      if (ids.length > 0) await pool.query('DELETE FROM fleet_alert_outbox WHERE id = ANY($1)', [ids]);
    },
    async retryAt(ids, nextAt, error) {
      if (ids.length > 0) await pool.query('UPDATE fleet_alert_outbox SET attempts = attempts + 1, next_at = $1, last_error = $2 WHERE id = ANY($3)', [nextAt, error, ids]);
    },
    async refused(ids, error) {
      if (ids.length > 0) await pool.query('UPDATE fleet_alert_outbox SET attempts = attempts + 1, failed = true, last_error = $1 WHERE id = ANY($2)', [error, ids]);
    },
    async outbox() {
      const { rows } = await pool.query<SummaryRow>(
        `SELECT receiver, count(*) FILTER (WHERE NOT failed) AS waiting, count(*) FILTER (WHERE failed) AS failed, min(created_at) AS oldest_at,
           (SELECT last_error FROM fleet_alert_outbox o WHERE o.receiver = f.receiver AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1) AS last_error
         FROM fleet_alert_outbox f GROUP BY receiver ORDER BY receiver`,
      );
      return rows.map(summaryOf);
    },
  };
}
