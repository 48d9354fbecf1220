import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDir } from '../store/fs-atomic.js';

/**
 * The file an artifact's blocks are written into, each at its offset, in any
 * order (sparse until complete): `{stateDir}/staging/{sha256}.part`.
 */
export class StagingFile {
  private constructor(private readonly fh: FileHandle) {}

  /**
   * Opens (creating if needed) the staging file at exactly `size` bytes.
   * `kept` says it already existed at that size, so the blocks recorded for
   * it can be trusted; a file of another size cannot hold them.
   */
  static async open(path: string, size: number): Promise<{ file: StagingFile; kept: boolean }> {
    await mkdir(dirname(path), { recursive: true });
    let kept = true;
    let fh: FileHandle;
    try {
      fh = await open(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fh = await open(path, 'w+');
      kept = false;
    }
    try {
      if ((await fh.stat()).size !== size) {
        kept = false;
        await fh.truncate(size);
      }
      if (!kept) {
        await fh.sync();
        await fsyncDir(dirname(path)); // the name must outlive power loss before any row refers to it
      }
    } catch (err) {
      await fh.close();
      throw err;
    }
    return { file: new StagingFile(fh), kept };
  }

  async write(block: Buffer, position: number): Promise<void> {
    await this.fh.write(block, 0, block.length, position);
  }

  sync(): Promise<void> {
    return this.fh.sync();
  }

  async size(): Promise<number> {
    return (await this.fh.stat()).size;
  }

  /** Reads into `buffer` from `position`; resolves with the bytes read (0 at the end). */
  async read(buffer: Buffer, position: number): Promise<number> {
    return (await this.fh.read(buffer, 0, buffer.length, position)).bytesRead;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
