/**
 * Where staged rollouts live (issue 14): the rollout records, the documents
 * published for them, and the lease that lets one collector at a time run
 * the controller. Both backends, behind one interface.
 *
 * A document is recorded before it is published, in the same transaction
 * as the step that asks for it, and marked once the broker has it: after a
 * crash at any point, the controller publishes what is recorded and not
 * marked (the same bytes, the same serial) before it takes another step, so
 * no serial is ever given twice and no step is skipped or taken twice.
 */
import type Database from 'better-sqlite3';
import type pg from 'pg';
import type { Interval, Rollout, ShadowSample } from '../rollout/planner.js';
import { postgresLease, sqliteLease } from './leases.js';
import { inTransaction } from './pg-transaction.js';

export interface NewPublication {
  /** `device:{id}` or `group:{name}`. */
  target: string;
  /** null for a removal (an empty retained message, section 10). */
  serial: number | null;
  /** The envelope to publish retained; empty for a removal. */
  payload: Buffer;
}

export interface Publication extends NewPublication {
  id: number;
  rollout: string;
  published: boolean;
}

export class RevisionConflict extends Error {
  constructor(id: string, expected: number | null) {
    super(expected === null ? `a rollout named ${id} exists already` : `rollout ${id} changed since revision ${expected} was read`);
    this.name = 'RevisionConflict';
  }
}

export interface RolloutRecords {
  /** Writes `r` if the stored revision is `expected` (null: it must not exist yet), with the documents its step asks for, in one transaction. */
  save(r: Rollout, expected: number | null, publications?: readonly NewPublication[]): Promise<void>;
  load(id: string): Promise<Rollout | undefined>;
  /** Newest first; `active`: running or paused only. */
  list(options?: { active?: boolean; limit?: number }): Promise<Rollout[]>;
  /** Recorded and not yet published, oldest first. */
  pending(rollout: string): Promise<Publication[]>;
  /** Rollouts with documents recorded and not yet published, whatever their status (a failed one's rollback documents). */
  unpublished(): Promise<string[]>;
  markPublished(ids: readonly number[]): Promise<void>;
  /** Per target, the highest serial any rollout recorded for it. */
  lastSerials(targets: readonly string[]): Promise<Map<string, number>>;
  /** Per device, the serial of the last device document this rollout recorded. */
  deviceSerials(rollout: string): Promise<Map<string, number>>;
  /** Stored inference intervals of these devices since `from` (epoch ms, the point's own time). */
  intervals(devices: readonly string[], from: number): Promise<Interval[]>;
  /** Stored shadow-evaluation points (section 11) of these devices since `from`. */
  shadows(devices: readonly string[], from: number): Promise<ShadowSample[]>;
  /**
   * Takes or keeps the controller lease for `holder`; false while another
   * holder has it. SQLite: a row renewed each tick that lapses after
   * `ttlMs`; PostgreSQL: a session advisory lock, freed when its holder's
   * connection goes.
   */
  lead(holder: string, ttlMs: number): Promise<boolean>;
  /** Gives the lease up (a clean stop). */
  resign(holder: string): Promise<void>;
}

export const SQLITE_ROLLOUT_MIGRATION = `
  CREATE TABLE fleet_rollouts (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL, revision INTEGER NOT NULL, doc TEXT NOT NULL);
  CREATE TABLE fleet_publications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, target TEXT NOT NULL, serial INTEGER,
    payload BLOB NOT NULL, published INTEGER NOT NULL DEFAULT 0, UNIQUE (target, serial)
  );
  CREATE INDEX fleet_publications_rollout ON fleet_publications (rollout, id);
  CREATE TABLE fleet_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at INTEGER NOT NULL);`;

export const POSTGRES_ROLLOUT_MIGRATION = `
  CREATE TABLE fleet_rollouts (id text PRIMARY KEY, created_at timestamptz NOT NULL, status text NOT NULL, revision bigint NOT NULL, doc jsonb NOT NULL);
  CREATE TABLE fleet_publications (
    id bigserial PRIMARY KEY, rollout text NOT NULL, target text NOT NULL, serial bigint,
    payload bytea NOT NULL, published boolean NOT NULL DEFAULT false, UNIQUE (target, serial)
  );
  CREATE INDEX fleet_publications_rollout ON fleet_publications (rollout, id);`;

const ACTIVE = ['running', 'paused'];
const LEASE = 'rollout-controller';
/** Any constant: the advisory lock the controller's leader holds. */
const LEADER_LOCK = 0x65667274;

type IntervalRow = { device: string; model: string; version: number; ts: number; count: number; errors: number; p99: number | null };

export function sqliteRollouts(db: Database.Database): RolloutRecords {
  const sql = {
    insert: db.prepare('INSERT INTO fleet_rollouts (id, created_at, status, revision, doc) VALUES (?, ?, ?, ?, ?)'),
    update: db.prepare('UPDATE fleet_rollouts SET status = ?, revision = ?, doc = ? WHERE id = ? AND revision = ?'),
    load: db.prepare<[string], { doc: string }>('SELECT doc FROM fleet_rollouts WHERE id = ?'),
    list: db.prepare<[number], { doc: string }>('SELECT doc FROM fleet_rollouts ORDER BY created_at DESC, id LIMIT ?'),
    active: db.prepare<[number], { doc: string }>(`SELECT doc FROM fleet_rollouts WHERE status IN ('running', 'paused') ORDER BY created_at DESC, id LIMIT ?`),
    publish: db.prepare('INSERT INTO fleet_publications (rollout, target, serial, payload) VALUES (?, ?, ?, ?)'),
    pending: db.prepare<[string], { id: number; rollout: string; target: string; serial: number | null; payload: Buffer }>(
      'SELECT id, rollout, target, serial, payload FROM fleet_publications WHERE rollout = ? AND published = 0 ORDER BY id',
    ),
    unpublished: db.prepare<[], { rollout: string }>('SELECT DISTINCT rollout FROM fleet_publications WHERE published = 0'),
    mark: db.prepare('UPDATE fleet_publications SET published = 1 WHERE id = ?'),
    lastSerial: db.prepare<[string], { serial: number | null }>('SELECT max(serial) AS serial FROM fleet_publications WHERE target = ?'),
    deviceSerials: db.prepare<[string], { target: string; serial: number }>(
      `SELECT target, max(serial) AS serial FROM fleet_publications WHERE rollout = ? AND target LIKE 'device:%' AND serial IS NOT NULL GROUP BY target`,
    ),
    intervals: db.prepare<[string, number], IntervalRow>(
      `SELECT device, model, version, ts, count, errors, p99 FROM fleet_points
       WHERE device IN (SELECT value FROM json_each(?)) AND kind = 'inference' AND ts >= ?`,
    ),
    shadows: db.prepare<[string, number], ShadowRow>(
      `SELECT device, model, version, ts, count AS samples, count - errors AS agreed, json_extract(data, '$.verdict') AS verdict FROM fleet_points
       WHERE device IN (SELECT value FROM json_each(?)) AND kind = 'shadow' AND ts >= ? AND model IS NOT NULL`,
    ),
  };
  const parse = (rows: { doc: string }[]): Rollout[] => rows.map((r) => JSON.parse(r.doc) as Rollout);
  return {
    ...sqliteLease(db, LEASE),
    async save(r, expected, publications = []) {
      db.transaction(() => {
        if (expected === null) {
          try {
            sql.insert.run(r.id, r.createdAt, r.status, r.revision, JSON.stringify(r));
          } catch (err) {
            if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new RevisionConflict(r.id, null);
            throw err;
          }
        } else if (sql.update.run(r.status, r.revision, JSON.stringify(r), r.id, expected).changes === 0) {
          throw new RevisionConflict(r.id, expected);
        }
        for (const p of publications) sql.publish.run(r.id, p.target, p.serial, p.payload);
      }).immediate();
    },
    async load(id) {
      return parse(sql.load.all(id))[0];
    },
    async list({ active = false, limit = 100 } = {}) {
      return parse((active ? sql.active : sql.list).all(limit));
    },
    async pending(rollout) {
      return sql.pending.all(rollout).map((p) => ({ ...p, published: false }));
    },
    async unpublished() {
      return sql.unpublished.all().map((r) => r.rollout);
    },
    async markPublished(ids) {
      db.transaction(() => {
        for (const id of ids) sql.mark.run(id);
      })();
    },
    async lastSerials(targets) {
      const out = new Map<string, number>();
      for (const t of targets) {
        const s = sql.lastSerial.get(t)?.serial;
        if (s != null) out.set(t, s);
      }
      return out;
    },
    async deviceSerials(rollout) {
      return new Map(sql.deviceSerials.all(rollout).map((r) => [r.target.slice('device:'.length), r.serial]));
    },
    async intervals(devices, from) {
      return sql.intervals.all(JSON.stringify(devices), from).map(intervalOf);
    },
    async shadows(devices, from) {
      return sql.shadows.all(JSON.stringify(devices), from).map(shadowOf);
    },
  };
}

type ShadowRow = { device: string; model: string; version: number; ts: number; samples: number; agreed: number; verdict: string | null };

function shadowOf(r: ShadowRow): ShadowSample {
  const verdict = r.verdict === 'activated' || r.verdict === 'rejected' ? r.verdict : null;
  return { device: r.device, model: r.model, version: Number(r.version), ts: Number(r.ts), samples: Number(r.samples), agreed: Number(r.agreed), verdict };
}

function intervalOf(r: IntervalRow): Interval {
  return { device: r.device, model: r.model, version: Number(r.version), ts: Number(r.ts), count: Number(r.count ?? 0), errors: Number(r.errors ?? 0), p99: r.p99 };
}

export function postgresRollouts(pool: pg.Pool, onLost: (err: Error) => void): RolloutRecords & { close(): Promise<void> } {
  const parse = (rows: { doc: Rollout }[]): Rollout[] => rows.map((r) => r.doc);
  return {
    ...postgresLease(pool, LEADER_LOCK, onLost),
    async save(r, expected, publications = []) {
      await inTransaction(pool, async (client) => {
        if (expected === null) {
          const { rowCount } = await client.query(
            'INSERT INTO fleet_rollouts (id, created_at, status, revision, doc) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING',
            [r.id, new Date(r.createdAt), r.status, r.revision, JSON.stringify(r)],
          );
          if (rowCount === 0) throw new RevisionConflict(r.id, null);
        } else {
          const { rowCount } = await client.query('UPDATE fleet_rollouts SET status = $1, revision = $2, doc = $3 WHERE id = $4 AND revision = $5', [
            r.status, r.revision, JSON.stringify(r), r.id, expected,
          ]);
          if (rowCount === 0) throw new RevisionConflict(r.id, expected);
        }
        for (const p of publications) {
          await client.query('INSERT INTO fleet_publications (rollout, target, serial, payload) VALUES ($1, $2, $3, $4)', [r.id, p.target, p.serial, p.payload]);
        }
      });
    },
    async load(id) {
      return parse((await pool.query<{ doc: Rollout }>('SELECT doc FROM fleet_rollouts WHERE id = $1', [id])).rows)[0];
    },
    async list({ active = false, limit = 100 } = {}) {
      const { rows } = await pool.query<{ doc: Rollout }>(
        `SELECT doc FROM fleet_rollouts WHERE NOT $1 OR status = ANY($2) ORDER BY created_at DESC, id LIMIT $3`,
        [active, ACTIVE, limit],
      );
      return parse(rows);
    },
    async pending(rollout) {
      const { rows } = await pool.query<{ id: string; rollout: string; target: string; serial: string | null; payload: Buffer }>(
        'SELECT id, rollout, target, serial, payload FROM fleet_publications WHERE rollout = $1 AND NOT published ORDER BY id',
        [rollout],
      );
      return rows.map((p) => ({ ...p, id: Number(p.id), serial: p.serial === null ? null : Number(p.serial), published: false }));
    },
    async unpublished() {
      return (await pool.query<{ rollout: string }>('SELECT DISTINCT rollout FROM fleet_publications WHERE NOT published')).rows.map((r) => r.rollout);
    },
    async markPublished(ids) {
      if (ids.length > 0) await pool.query('UPDATE fleet_publications SET published = true WHERE id = ANY($1)', [ids]);
    },
    async lastSerials(targets) {
      const { rows } = await pool.query<{ target: string; serial: string }>(
        'SELECT target, max(serial) AS serial FROM fleet_publications WHERE target = ANY($1) AND serial IS NOT NULL GROUP BY target',
        [targets],
      );
      return new Map(rows.map((r) => [r.target, Number(r.serial)]));
    },
    async deviceSerials(rollout) {
      const { rows } = await pool.query<{ target: string; serial: string }>(
        `SELECT target, max(serial) AS serial FROM fleet_publications WHERE rollout = $1 AND target LIKE 'device:%' AND serial IS NOT NULL GROUP BY target`,
        [rollout],
      );
      return new Map(rows.map((r) => [r.target.slice('device:'.length), Number(r.serial)]));
    },
    async intervals(devices, from) {
      const { rows } = await pool.query<IntervalRow>(
        `SELECT device, model, version::float8 AS version, (extract(epoch FROM ts) * 1000)::float8 AS ts, count::float8 AS count,
           errors::float8 AS errors, p99 FROM fleet_points
         WHERE device = ANY($1) AND kind = 'inference' AND ts >= $2`,
        [devices, new Date(from)],
      );
      return rows.map(intervalOf);
    },
    async shadows(devices, from) {
      const { rows } = await pool.query<ShadowRow>(
        `SELECT device, model, version::float8 AS version, (extract(epoch FROM ts) * 1000)::float8 AS ts, count::float8 AS samples,
           (count - errors)::float8 AS agreed, data->>'verdict' AS verdict FROM fleet_points
         WHERE device = ANY($1) AND kind = 'shadow' AND ts >= $2 AND model IS NOT NULL`,
        [devices, new Date(from)],
      );
      return rows.map(shadowOf);
    },
  };
}
