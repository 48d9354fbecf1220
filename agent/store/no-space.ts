import { readFileSync, statfsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/**
 * A full filesystem, as one typed error wherever the agent writes: files
 * (ENOSPC, EDQUOT) and SQLite (SQLITE_FULL, a WAL index it cannot grow). The
 * rollout classifies it as NO_SPACE (agent/rollout/errors.ts: reported
 * `failed`, retried until there is room); telemetry counts the point as
 * dropped. The message names the filesystem, the file and, when the writer
 * knows it, the bytes it needed.
 */
export class NoSpaceError extends Error {
  readonly code = 'NO_SPACE';
  /** The file or directory being written. */
  readonly path: string;
  /** Bytes the write needed, when the writer knows. */
  readonly needed: number | undefined;
  /** Bytes free to unprivileged writers when it failed, if the filesystem could be asked. */
  readonly free: number | undefined;

  /**
   * `detail` is appended after a semicolon (what the agent does about it);
   * `free` overrides asking the filesystem.
   */
  constructor(path: string, needed: number | undefined, options: { cause?: unknown; free?: number; detail?: string } = {}) {
    const free = options.free ?? freeBytes(path);
    const mount = mountPointOf(path);
    const need = needed === undefined ? '' : `: needs ${needed} bytes`;
    const left = free === undefined ? '' : ` (${free} bytes free)`;
    const detail = options.detail === undefined ? '' : `; ${options.detail}`;
    super(`no space left on ${mount} for ${path}${need}${left}${detail}`, { cause: options.cause });
    this.name = 'NoSpaceError';
    this.path = path;
    this.needed = needed;
    this.free = free;
  }
}

const ERRNO_NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);
/**
 * SQLite's words for it: SQLITE_FULL for a write (it maps ENOSPC there), and
 * SQLITE_IOERR_SHMSIZE when the WAL index (`-shm`, 32 KiB) cannot be created.
 */
const SQLITE_NO_SPACE = new Set(['SQLITE_FULL', 'SQLITE_IOERR_SHMSIZE']);

/** True for an error that means the filesystem is full, typed or not. */
export function isNoSpace(err: unknown): boolean {
  if (err instanceof NoSpaceError) return true;
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && (ERRNO_NO_SPACE.has(code) || SQLITE_NO_SPACE.has(code));
}

/** `err` as a NoSpaceError about `path` if it means the filesystem is full, else `err` unchanged. */
export function asNoSpace(err: unknown, path: string, needed?: number): unknown {
  if (err instanceof NoSpaceError || !isNoSpace(err)) return err;
  return new NoSpaceError(path, needed, { cause: err });
}

/** Runs `fn`, turning a full-filesystem failure into a NoSpaceError about `path`. */
export async function noSpaceAs<T>(path: string, needed: number | undefined, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw asNoSpace(err, path, needed);
  }
}

/** Bytes an unprivileged writer may still use on the filesystem holding `path` (or its nearest existing parent). */
export function freeBytes(path: string): number | undefined {
  for (let p = resolve(path); ; p = dirname(p)) {
    try {
      const s = statfsSync(p);
      return s.bavail * s.bsize;
    } catch {
      if (dirname(p) === p) return undefined;
    }
  }
}

/**
 * The mount point of the filesystem holding `path`: what an operator runs
 * `df` on. Read from /proc/self/mountinfo (Linux); elsewhere the path itself.
 */
export function mountPointOf(path: string): string {
  const abs = resolve(path);
  let table: string;
  try {
    table = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return abs;
  }
  let best = '';
  for (const line of table.split('\n')) {
    // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw": field 5 is the mount point.
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    const mount = field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    const inside = mount === '/' || abs === mount || abs.startsWith(`${mount}/`);
    if (inside && mount.length > best.length) best = mount;
  }
  return best || abs;
}
