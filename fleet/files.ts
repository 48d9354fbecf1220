/**
 * File output that survives a crash or power cut mid-write (temp, fsync,
 * rename or link, fsync the directory) and input with clear one-line errors.
 */
import { randomBytes } from 'node:crypto';
import { chmod, link, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { FailureError } from './errors.js';

export interface WriteOptions {
  mode?: number;
  /** Replace an existing file; without it an existing file is an error. */
  overwrite?: boolean;
}

export async function writeFileAtomic(path: string, data: string | Uint8Array, opts: WriteOptions = {}): Promise<void> {
  const mode = opts.mode ?? 0o644;
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(data);
    // The umask may have narrowed or (for 0600) must not have widened the mode.
    await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    if (opts.overwrite) {
      await rename(temp, path);
    } else {
      // link() fails with EEXIST atomically, so two runs cannot both "create" the file.
      await link(temp, path);
      await unlink(temp);
    }
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new FailureError(`${path} already exists; pass --force to replace it`);
    throw err;
  }
  await syncDir(dirname(path));
  await chmod(path, mode);
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Reads a file the operator named; the error names the file and the flag, never the content. */
export async function readInput(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : (code ?? 'unreadable');
    throw new FailureError(`cannot read ${what} ${path}: ${why}`);
  }
}

export async function readJsonInput(path: string, what: string): Promise<unknown> {
  const bytes = await readInput(path, what);
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    // The parser's message quotes the text around the error; it could be a key file passed by mistake.
    throw new FailureError(`${what} ${path} is not valid JSON`);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
