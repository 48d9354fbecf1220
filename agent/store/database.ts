import { dirname, join } from 'node:path';
import BetterSqlite from 'better-sqlite3';
import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { migrate as migrateSqlite, openSqlite, schemaVersion } from '../../lib/sqlite.js';
import { isNoSpace, NoSpaceError } from './no-space.js';
import { SpaceReserve } from './space-reserve.js';

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
  // 3: telemetry acknowledged by the collector (PROTOCOL.md section 12). sent_at:
  // when a row was last published (epoch ms, NULL = never), so an unacknowledged
  // point goes again telemetry.ackTimeoutS later, across restarts too; indexed
  // with seq for the oldest unsent and due rows. acked_up_to: the highest upTo a
  // collector acknowledged. pending_refused: points refused on a full disk
  // (they never had a seq), reported apart from buffer-full drops (section 13).
  `ALTER TABLE telemetry_outbox ADD COLUMN sent_at INTEGER;
   CREATE INDEX telemetry_outbox_sent ON telemetry_outbox (sent_at, seq);
   ALTER TABLE telemetry_state ADD COLUMN acked_up_to INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE telemetry_state ADD COLUMN pending_refused INTEGER NOT NULL DEFAULT 0;`,
];

export interface OpenOptions {
  /** Migrations to apply; defaults to {@link MIGRATIONS}. Tests pass their own. */
  migrations?: readonly string[];
  /** Where to say how a full filesystem changed the way the database was opened. */
  logger?: Logger;
}

/** Where the agent keeps its database inside `stateDir`. */
export function agentDatabasePath(stateDir: string): string {
  return join(stateDir, 'agent.db');
}

/** How a write may use the space reserve (agent/store/space-reserve.ts). */
export interface WriteOptions {
  /** Records what has already happened: on a full filesystem it may use the reserve ({@link AgentDatabase.essential}). */
  essential?: boolean;
}

/** How often, at most, a released space reserve is made again. */
const RESERVE_RETRY_MS = 10_000;

export class AgentDatabase {
  readonly db: Database.Database;
  /** The database file (the in-memory copy's origin when read-only). */
  readonly file: string;
  /**
   * Set when the filesystem had no room to create or migrate the file: the
   * agent runs on a read-only in-memory copy, and every write fails with
   * this error until it restarts with room.
   */
  readonly readOnly: NoSpaceError | undefined;
  private readonly reserve: SpaceReserve;
  private readonly logger: Logger | undefined;
  private reserveReleasedAt = 0;

  private constructor(db: Database.Database, file: string, options: { readOnly?: NoSpaceError; logger?: Logger }) {
    this.db = db;
    this.file = file;
    this.readOnly = options.readOnly;
    this.logger = options.logger;
    this.reserve = new SpaceReserve(join(dirname(file), 'reserved-space'));
    if (!this.readOnly && !this.reserve.ensure()) this.reserveReleasedAt = Date.now();
  }

  /**
   * Opens (creating if needed) and migrates the database at `file`. A full
   * filesystem does not stop the agent: without room for the WAL index the
   * file is opened in exclusive locking mode (the index lives in memory), and
   * without room to create or migrate it the agent gets a read-only copy in
   * memory, on which every write is a NoSpaceError (see {@link readOnly}).
   */
  static open(file: string, options: OpenOptions = {}): AgentDatabase {
    const migrations = options.migrations ?? MIGRATIONS;
    const logger = options.logger;
    try {
      return new AgentDatabase(openSqlite(file, { migrations, owner: 'agent' }), file, { logger });
    } catch (err) {
      if (!isNoSpace(err)) throw err;
    }
    try {
      const db = openSqlite(file, { migrations, owner: 'agent', exclusive: true });
      logger?.warn({ file, err: new NoSpaceError(file, undefined).message }, 'no room for the database\'s WAL index; opened in exclusive locking mode (no other process can read it until the agent restarts)');
      return new AgentDatabase(db, file, { logger });
    } catch (err) {
      if (!isNoSpace(err)) throw err;
    }
    const readOnly = new NoSpaceError(file, undefined, { detail: 'the state database could not be created or migrated; it is read-only until the agent restarts with room' });
    logger?.error({ file, err: readOnly.message }, 'state database opened read-only: nothing the rollout or telemetry does is recorded');
    return new AgentDatabase(readOnlyCopy(file, migrations), file, { readOnly, logger });
  }

  /** The schema version the database is at (`PRAGMA user_version`). */
  get schemaVersion(): number {
    return schemaVersion(this.db);
  }

  /**
   * Runs `fn` (a write): a full filesystem becomes a NoSpaceError naming the
   * file and, from `bytes` (what the write stores), about what it needed.
   */
  write<T>(fn: () => T, bytes?: number | (() => number)): T {
    let result: T;
    try {
      result = fn();
    } catch (err) {
      throw this.noSpace(err, bytes);
    }
    if (this.reserveReleasedAt !== 0 && Date.now() - this.reserveReleasedAt > RESERVE_RETRY_MS) this.remakeReserve();
    return result;
  }

  /**
   * A write that records what has already happened (it must not be lost to
   * a full filesystem if at all possible): when there is no room, frees the
   * space reserve and tries once more. Inside a transaction it is a plain
   * write; the transaction's caller decides.
   */
  essential<T>(fn: () => T, bytes?: number | (() => number)): T {
    try {
      return this.write(fn, bytes);
    } catch (err) {
      if (!(err instanceof NoSpaceError) || this.readOnly || this.db.inTransaction || !this.reserve.release()) throw err;
      this.reserveReleasedAt = Date.now();
      this.logger?.warn({ err: err.message }, 'filesystem full: released the space reserve for a record that must be kept');
      return this.write(fn, bytes);
    }
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

  private noSpace(err: unknown, bytes: number | (() => number) | undefined): unknown {
    if (this.readOnly && (err as { code?: unknown }).code === 'SQLITE_READONLY') return this.readOnly;
    if (!isNoSpace(err)) return err;
    if (err instanceof NoSpaceError) return err;
    // A commit appends whole pages to the WAL: the rows' pages and one more for the tree above them.
    const page = this.db.pragma('page_size', { simple: true }) as number;
    const stored = typeof bytes === 'function' ? bytes() : bytes;
    const needed = stored === undefined ? undefined : (Math.ceil(stored / page) + 1) * page;
    return new NoSpaceError(this.file, needed, { cause: err });
  }

  private remakeReserve(): void {
    this.reserveReleasedAt = Date.now();
    if (!this.reserve.ensure()) return;
    this.reserveReleasedAt = 0;
    this.logger?.info('room again on the state filesystem; space reserve restored');
  }
}

/**
 * The file's contents (or an empty database), migrated, in memory and
 * read-only: what the agent runs on when the filesystem has no room even to
 * migrate. Exclusive locking reads a WAL-mode file without its `-shm`.
 */
function readOnlyCopy(file: string, migrations: readonly string[]): Database.Database {
  let image: Buffer | undefined;
  const source = new BetterSqlite(file, { fileMustExist: false });
  try {
    source.pragma('locking_mode = EXCLUSIVE');
    if (schemaVersion(source) > 0) image = source.serialize();
  } finally {
    source.close();
  }
  // Bytes 18 and 19 of the header say WAL (2); an in-memory database has no WAL: legacy (1).
  if (image) image.fill(1, 18, 20);
  const db = image ? new BetterSqlite(image) : new BetterSqlite(':memory:');
  migrateSqlite(db, migrations, 'agent');
  db.pragma('query_only = ON');
  return db;
}

/** lib/sqlite.ts's migrate, refusing a file from a newer agent. */
export function migrate(db: Database.Database, migrations: readonly string[]): number {
  return migrateSqlite(db, migrations, 'agent');
}

/** JSON documents by key. Callers validate what they read with its schema. */
export interface KvStore {
  getJson<T = unknown>(key: string): T | undefined;
  /** A full filesystem is a NoSpaceError (agent/store/no-space.ts); `essential` may use the space reserve. */
  setJson(key: string, value: unknown, options?: WriteOptions): void;
  delete(key: string, options?: WriteOptions): void;
  /** Runs `fn`'s writes as one transaction: all of them or none. */
  transaction(fn: () => void, options?: WriteOptions): void;
}

export function kv(database: AgentDatabase): KvStore {
  const { db } = database;
  const get = db.prepare<[string], { value: string }>('SELECT value FROM kv WHERE key = ?');
  const set = db.prepare<[string, string]>(
    'INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
  );
  const del = db.prepare<[string]>('DELETE FROM kv WHERE key = ?');
  const write = <T>(fn: () => T, bytes: number, options: WriteOptions = {}): T => (options.essential ? database.essential(fn, bytes) : database.write(fn, bytes));
  return {
    getJson<T = unknown>(key: string): T | undefined {
      const row = get.get(key);
      return row === undefined ? undefined : (JSON.parse(row.value) as T);
    },
    setJson(key: string, value: unknown, options?: WriteOptions): void {
      const text = JSON.stringify(value);
      if (text === undefined) throw new TypeError(`kv value for ${key} is not JSON-serialisable`);
      write(() => set.run(key, text), key.length + Buffer.byteLength(text), options);
    },
    delete(key: string, options?: WriteOptions): void {
      write(() => del.run(key), key.length, options);
    },
    transaction(fn: () => void, options?: WriteOptions): void {
      write(() => db.transaction(fn)(), 0, options);
    },
  };
}
