import { execFileSync } from 'node:child_process';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A small tmpfs of its own for a test to fill: a real filesystem that runs
 * out of space (ENOSPC, SQLITE_FULL) where the test says. Mounting needs
 * root (or CAP_SYS_ADMIN); where it is impossible the caller skips with the
 * reason this returns.
 */
export interface Tmpfs {
  readonly dir: string;
  /** Writes a filler file until the filesystem is full; returns the bytes written. */
  fill(): number;
  /** Deletes the filler files. */
  free(): Promise<void>;
  unmount(): Promise<void>;
}

let fillers = 0;

export async function mountTmpfs(sizeBytes: number): Promise<Tmpfs | { skip: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    const why = (err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message;
    return { skip: `cannot mount a tmpfs to fill (${why}); run the tests as root to include them` };
  }
  return {
    dir,
    fill() {
      const file = join(dir, `filler-${process.pid}-${++fillers}`);
      const fd = openSync(file, 'w');
      let written = 0;
      try {
        // Big chunks first, then single pages, so at most a page stays free.
        for (const chunk of [Buffer.alloc(1 << 20, 1), Buffer.alloc(4096, 1)]) {
          for (;;) {
            try {
              const n = writeSync(fd, chunk);
              written += n;
              if (n < chunk.length) break;
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
              break;
            }
          }
        }
      } finally {
        closeSync(fd);
      }
      return written;
    },
    async free() {
      for (const name of await readdir(dir)) if (name.startsWith('filler-')) await rm(join(dir, name), { force: true });
    },
    async unmount() {
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      await rm(dir, { recursive: true, force: true });
    },
  };
}
