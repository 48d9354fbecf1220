import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { EdgefleetError } from '../errors.js';
import { removeQuietly, writeFileAtomic } from './fs-atomic.js';
import { isNoSpace } from './no-space.js';

/**
 * One agent per state directory, for the life of the process.
 *
 * The lock is an open SQLite write transaction on `{stateDir}/agent.lock`:
 * SQLite holds it with an OS file lock, which the kernel drops when the
 * process dies however it dies (kill -9, power loss), so a stale lock never
 * outlives its owner and there is no PID file to second-guess. A second
 * agent (another process, or another agent in the same process) is refused
 * before it touches the MQTT session, the database or the model store.
 */
export class StateDirLock {
  private db: Database.Database | undefined;

  constructor(private readonly stateDir: string) {}

  get path(): string {
    return join(this.stateDir, 'agent.lock');
  }

  private get ownerFile(): string {
    return join(this.stateDir, 'agent.lock.owner');
  }

  async start(): Promise<void> {
    const db = new Database(this.path, { timeout: 0 });
    try {
      // The file holds nothing: with the journal in memory, taking the lock writes nothing, so it works on a full disk.
      db.pragma('journal_mode = MEMORY');
      db.exec('BEGIN EXCLUSIVE');
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code !== 'SQLITE_BUSY') throw err;
      throw new EdgefleetError(
        'CONFIG',
        `state directory ${this.stateDir} is in use by another edgefleet-agent${this.owner()}; ` +
          'one agent per state directory: stop the other one or give this one its own stateDir',
      );
    }
    this.db = db;
    // Only for the message a second agent prints; the file lock is what counts,
    // so a full filesystem must not stop the start: a stale owner is removed instead.
    try {
      await writeFileAtomic(this.ownerFile, `${JSON.stringify({ pid: process.pid, since: new Date().toISOString() })}\n`);
    } catch (err) {
      if (!isNoSpace(err)) throw err;
      await removeQuietly(this.ownerFile);
    }
  }

  async stop(): Promise<void> {
    const db = this.db;
    this.db = undefined;
    if (db?.open) db.close(); // closing ends the transaction and releases the file lock
  }

  private owner(): string {
    try {
      const { pid, since } = JSON.parse(readFileSync(this.ownerFile, 'utf8')) as { pid?: unknown; since?: unknown };
      return typeof pid === 'number' ? ` (pid ${pid}${typeof since === 'string' ? `, since ${since}` : ''})` : '';
    } catch {
      return '';
    }
  }
}
