import { randomBytes } from 'node:crypto';
import { link, open, rename, rm, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Power can fail at any instant: a reader must see either the old file or the
 * complete new one. Write a temp file in the same directory (rename is only
 * atomic within one filesystem), fsync it so its bytes are on disk before the
 * name points at them, rename it over the target, then fsync the directory so
 * the rename itself survives. With `exclusive`, an existing target is an
 * EEXIST error instead of being replaced (link() fails atomically, so two
 * writers cannot both create the file). On any failure the temp file is
 * removed and the target is left as it was; the error is the system's (the
 * agent's agent/store/fs-atomic.ts turns a full filesystem into NoSpaceError).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644, options: { exclusive?: boolean } = {}): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await open(temp, 'wx', mode);
    try {
      await fh.writeFile(data);
      // open() applies the umask; chmod makes the mode exactly what was asked.
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (options.exclusive) {
      await link(temp, path);
      await unlink(temp);
    } else {
      await rename(temp, path);
    }
  } catch (err) {
    await removeQuietly(temp);
    throw err;
  }
  await fsyncDir(dir);
}

/** Makes entries created, renamed or removed in `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Best-effort removal for cleanup paths, where a failure must not mask the original error. */
export async function removeQuietly(path: string): Promise<void> {
  try {
    await rm(path, { force: true, recursive: true });
  } catch {
    // Nothing useful to do: the caller is already cleaning up.
  }
}
