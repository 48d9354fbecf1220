import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { migrate as migrateSqlite, openSqlite, schemaVersion } from '../../lib/sqlite.js';

/**
 * The agent's durable state: one SQLite file in the state directory.
 *
 * Schema changes are an ordered, append-only list of SQL strings; entry N
 * brings the database from `user_version` N to N+1. Never edit or reorder a
 * migration that has shipped (devices in the field have already run it):
 * append a new one instead.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: key/value documents (trust, last applied serials) and artifact pull progress.
  `CREATE TABLE kv (
     key   TEXT PRIMARY KEY,
     value TEXT NOT NULL
   );
   CREATE TABLE artifact_blocks (
     sha256 TEXT    NOT NULL,
     idx    INTEGER NOT NULL,
     PRIMARY KEY (sha256, idx)
   ) WITHOUT ROWID;`,
  // 2: telemetry outbox (agent/telemetry/outbox.ts). Each row is one point's
  // JSON, seq included. The one telemetry_state row holds the next seq and the
  // drop counters, updated in the same transaction as the rows they describe,
  // so a seq is never reused and no drop goes uncounted across a crash.
  `CREATE TABLE telemetry_outbox (
     seq   INTEGER PRIMARY KEY,
     kind  TEXT    NOT NULL,
     bytes INTEGER NOT NULL,
     body  TEXT    NOT NULL
   );
   CREATE TABLE telemetry_state (
     id            INTEGER PRIMARY KEY CHECK (id = 1),
     next_seq      INTEGER NOT NULL,
     dropped_total INTEGER NOT NULL,
     pending_count INTEGER NOT NULL,
     pending_from  INTEGER,
     pending_to    INTEGER
   );
   INSERT INTO telemetry_state (id, next_seq, dropped_total, pending_count) VALUES (1, 1, 0, 0);`,
];

export interface OpenOptions {
  /** Migrations to apply; defaults to {@link MIGRATIONS}. Tests pass their own. */
  migrations?: readonly string[];
}

/** Where the agent keeps its database inside `stateDir`. */
export function agentDatabasePath(stateDir: string): string {
  return join(stateDir, 'agent.db');
}

export class AgentDatabase {
  readonly db: Database.Database;

  private constructor(db: Database.Database) {
    this.db = db;
  }

  /** Opens (creating if needed) and migrates the database at `file`. */
  static open(file: string, options: OpenOptions = {}): AgentDatabase {
    return new AgentDatabase(openSqlite(file, { migrations: options.migrations ?? MIGRATIONS, owner: 'agent' }));
  }

  /** The schema version the database is at (`PRAGMA user_version`). */
  get schemaVersion(): number {
    return schemaVersion(this.db);
  }

  /**
   * Runs `fn` (a write) with `synchronous = NORMAL`: the commit skips its WAL
   * fsync, so it costs microseconds instead of a disk flush on the event loop.
   * It still survives the process being killed (the WAL is in the page cache),
   * and a later FULL commit or checkpoint makes it durable; only power loss
   * in between can undo it. For rows that are hints, such as pull progress
   * whose loss only means a block is fetched again, never for data the agent
   * must not lose.
   */
  relaxed<T>(fn: () => T): T {
    this.db.pragma('synchronous = NORMAL');
    try {
      return fn();
    } finally {
      this.db.pragma('synchronous = FULL');
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** lib/sqlite.ts's migrate, refusing a file from a newer agent. */
export function migrate(db: Database.Database, migrations: readonly string[]): number {
  return migrateSqlite(db, migrations, 'agent');
}

/** JSON documents by key. Callers validate what they read with its schema. */
export interface KvStore {
  getJson<T = unknown>(key: string): T | undefined;
  setJson(key: string, value: unknown): void;
  delete(key: string): void;
}

export function kv(database: AgentDatabase): KvStore {
  const { db } = database;
  const get = db.prepare<[string], { value: string }>('SELECT value FROM kv WHERE key = ?');
  const set = db.prepare<[string, string]>(
    'INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
  );
  const del = db.prepare<[string]>('DELETE FROM kv WHERE key = ?');
  return {
    getJson<T = unknown>(key: string): T | undefined {
      const row = get.get(key);
      return row === undefined ? undefined : (JSON.parse(row.value) as T);
    },
    setJson(key: string, value: unknown): void {
      const text = JSON.stringify(value);
      if (text === undefined) throw new TypeError(`kv value for ${key} is not JSON-serialisable`);
      set.run(key, text);
    },
    delete(key: string): void {
      del.run(key);
    },
  };
}
