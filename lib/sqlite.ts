/**
 * One SQLite file as both sides keep durable state: the agent's state database
 * and the collector's embedded store. Opening sets the pragmas that make a
 * commit survive power loss, then brings the schema up to date.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

export interface OpenSqliteOptions {
  /**
   * Ordered, append-only schema changes: entry N brings the file from
   * `user_version` N to N+1. Never edit or reorder one that has shipped.
   */
  migrations: readonly string[];
  /** Who writes the file ("agent", "collector"), for the error about a file from a newer release. */
  owner: string;
  /**
   * Exclusive locking mode: no other process can open the file, and in
   * return WAL keeps its index in this process's memory instead of the
   * `-shm` file, which a full filesystem may have no room to create.
   */
  exclusive?: boolean;
}

/** Opens (creating it and its directory if needed) and migrates the database at `file`. */
export function openSqlite(file: string, options: OpenSqliteOptions): Database.Database {
  mkdirSync(dirname(file), { recursive: true });
  const db = new Database(file);
  try {
    if (options.exclusive) db.pragma('locking_mode = EXCLUSIVE');
    // WAL keeps readers off the writer's back; FULL syncs the WAL on every
    // commit, so a committed row survives power loss (NORMAL may lose it).
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    // Another process on the same file (a second collector, a reader CLI) waits instead of failing.
    db.pragma('busy_timeout = 5000');
    migrate(db, options.migrations, options.owner);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

/** The schema version the database is at (`PRAGMA user_version`). */
export function schemaVersion(db: Database.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Applies the migrations the database has not seen yet, each in its own
 * transaction together with its `user_version` bump, so a crash mid-way
 * leaves the database at the previous version, never half-migrated.
 * Returns the resulting version.
 */
export function migrate(db: Database.Database, migrations: readonly string[], owner: string): number {
  const current = schemaVersion(db);
  if (current > migrations.length) {
    throw new Error(
      `database ${db.name} is at schema version ${current} but this ${owner} knows only ${migrations.length}; ` +
        `it was written by a newer ${owner}, refusing to use it`,
    );
  }
  migrations.forEach((sql, index) => {
    if (index < current) return;
    db.transaction(() => {
      db.exec(sql);
      db.pragma(`user_version = ${index + 1}`);
    })();
  });
  return migrations.length;
}
