import type { Statement } from 'better-sqlite3';
import type { AgentDatabase } from '../store/database.js';

/** Forgets an artifact's pull progress, so the next pull starts from scratch. A full filesystem is a NoSpaceError. */
export function clearArtifactProgress(db: AgentDatabase, sha256: string): void {
  db.write(() => db.db.prepare('DELETE FROM artifact_blocks WHERE sha256 = ?').run(sha256));
}

/** The artifacts (sha256) with pull progress recorded. */
export function artifactsInProgress(db: AgentDatabase): string[] {
  return db.db.prepare<[], { sha256: string }>('SELECT DISTINCT sha256 FROM artifact_blocks').all().map((r) => r.sha256);
}

export interface BlockProgressOptions {
  db: AgentDatabase;
  sha256: string;
  /** Blocks in the artifact; recorded indices outside 0..total-1 are ignored. */
  total: number;
  /** Makes every byte written to the staging file so far durable (fsync). */
  sync: () => Promise<void>;
  /** Called after each commit with the number of blocks now recorded. */
  onDurable: (durable: number) => void;
  /** A failed fsync or commit; nothing more is recorded after it. */
  onError: (err: unknown) => void;
}

/**
 * Which blocks of one artifact are in its staging file for good: rows in
 * `artifact_blocks`, all of this table's SQL. A block is recorded only after
 * its bytes are fsynced (group commit: one fsync covers every block written
 * before it started; blocks written meanwhile wait for the next, so fast
 * disks sync per block and slow ones batch themselves). The rows are
 * committed without a WAL fsync of their own (AgentDatabase.relaxed): a kill
 * keeps them, power loss may drop the last few, which only means those
 * blocks are fetched again.
 */
export class BlockProgress {
  private readonly select: Statement<[string], { idx: number }>;
  private readonly record: (batch: number[]) => void;
  /** Written to the staging file, not yet fsynced. */
  private pending: number[] = [];
  private durableCount = 0;
  private flushing: Promise<void> | undefined;
  private halted = false;

  constructor(private readonly o: BlockProgressOptions) {
    const { db } = o.db;
    this.select = db.prepare<[string], { idx: number }>('SELECT idx FROM artifact_blocks WHERE sha256 = ?');
    const insert = db.prepare<[string, number]>('INSERT OR IGNORE INTO artifact_blocks (sha256, idx) VALUES (?, ?)');
    const insertAll = db.transaction((batch: number[]) => {
      for (const i of batch) insert.run(o.sha256, i);
    });
    // About 80 bytes a row in the WAL; a full filesystem is a NoSpaceError that ends the pull.
    this.record = (batch) => o.db.relaxed(() => o.db.write(() => insertAll(batch), batch.length * 80));
  }

  /** The blocks recorded by an earlier pull; they count as durable from here on. */
  load(): Set<number> {
    const done = new Set(this.select.all(this.o.sha256).map((r) => r.idx).filter((i) => i >= 0 && i < this.o.total));
    this.durableCount = done.size;
    return done;
  }

  clear(): void {
    clearArtifactProgress(this.o.db, this.o.sha256);
  }

  get durable(): number {
    return this.durableCount;
  }

  /** Block `i`'s bytes are written; it is recorded after the next fsync. */
  written(i: number): void {
    this.pending.push(i);
    this.kick();
  }

  /** Records nothing more (a write failed: the pull is over). */
  halt(): void {
    this.halted = true;
  }

  /** Resolves once every block written so far is recorded, or the commit failed. */
  async settled(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private kick(): void {
    if (this.flushing || this.halted) return;
    this.flushing = this.flushLoop()
      .catch((err: unknown) => {
        this.halted = true;
        this.o.onError(err);
      })
      .finally(() => {
        this.flushing = undefined;
        if (this.pending.length > 0) this.kick(); // written after the loop's last check
      });
  }

  private async flushLoop(): Promise<void> {
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      await this.o.sync(); // the bytes are durable before a row says so
      this.record(batch);
      this.durableCount += batch.length;
      this.o.onDurable(this.durableCount);
    }
  }
}
