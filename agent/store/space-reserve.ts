import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { freeBytes } from './no-space.js';

/** Enough for many small SQLite commits (a few WAL pages each). */
export const RESERVE_BYTES = 1024 * 1024;

/**
 * Room the agent keeps for itself on the state filesystem: one file of
 * RESERVE_BYTES (`{stateDir}/reserved-space`). When the filesystem is full,
 * a record of what has already happened (the serving set, the end of a
 * health window) must still reach the database, or the next start would act
 * on a stale picture: such a write frees the reserve and tries once more
 * (AgentDatabase.essential). It is made again once there is plenty of room.
 * Its bytes are random so that a compressing filesystem stores them whole.
 * Deleting the file by hand is harmless.
 */
export class SpaceReserve {
  constructor(
    readonly path: string,
    readonly bytes = RESERVE_BYTES,
  ) {}

  /** Makes the reserve if it is missing and four times its size is free; true when it is there afterwards. Never throws. */
  ensure(): boolean {
    if (existsSync(this.path)) return true;
    const free = freeBytes(dirname(this.path));
    if (free === undefined || free < 4 * this.bytes) return false;
    const temp = `${this.path}.tmp`;
    try {
      const fd = openSync(temp, 'w', 0o600);
      try {
        const data = randomFillSync(Buffer.alloc(this.bytes));
        for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temp, this.path);
      return true;
    } catch {
      rmSync(temp, { force: true });
      return false;
    }
  }

  /** Deletes the reserve; true when there was one to free. */
  release(): boolean {
    try {
      unlinkSync(this.path);
      return true;
    } catch {
      return false;
    }
  }
}
