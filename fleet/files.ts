/**
 * File output that survives a crash or power cut mid-write (temp, fsync,
 * rename or link, fsync the directory) and input with clear one-line errors.
 */
import { readFile, stat } from 'node:fs/promises';
import { writeFileAtomic as writeAtomic } from '../lib/fs-atomic.js';
import { FailureError } from './errors.js';

export interface WriteOptions {
  mode?: number;
  /** Replace an existing file; without it an existing file is an error. */
  overwrite?: boolean;
}

/** The crash-safe write both sides use (lib/fs-atomic.ts), with an operator's error for a file that exists. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, opts: WriteOptions = {}): Promise<void> {
  try {
    await writeAtomic(path, data, opts.mode ?? 0o644, { exclusive: !opts.overwrite });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new FailureError(`${path} already exists; pass --force to replace it`);
    throw err;
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
