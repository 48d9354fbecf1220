import { fsyncDir, removeQuietly, writeFileAtomic as writeAtomic } from '../../lib/fs-atomic.js';
import { noSpaceAs } from './no-space.js';

export { fsyncDir, removeQuietly };

/**
 * The crash-safe write of lib/fs-atomic.ts (temp, fsync, rename or link,
 * fsync the directory), with a full filesystem as a NoSpaceError naming
 * `path` and the bytes written; the target is left as it was.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644, options: { exclusive?: boolean } = {}): Promise<void> {
  await noSpaceAs(path, typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength, () => writeAtomic(path, data, mode, options));
}
