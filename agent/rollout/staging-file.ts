import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDir } from '../store/fs-atomic.js';
import { asNoSpace, noSpaceAs } from '../store/no-space.js';

/**
 * The file an artifact's blocks are written into, each at its offset, in any
 * order (sparse until complete): `{stateDir}/staging/{sha256}.part`. A full
 * filesystem is a NoSpaceError naming the file and the bytes it still needs.
 */
export class StagingFile {
  private constructor(
    private readonly fh: FileHandle,
    private readonly path: string,
    private readonly length: number,
  ) {}

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
      fh = await noSpaceAs(path, size, () => open(path, 'w+'));
      kept = false;
    }
    const file = new StagingFile(fh, path, size);
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
      const failure = await file.noSpace(err);
      await fh.close();
      throw failure;
    }
    return { file, kept };
  }

  /**
   * Writes all of `block` at `position`. A full filesystem may take part of
   * a write; the loop asks for the rest, which then fails with ENOSPC, so a
   * block is never taken as written when only its start is on disk.
   */
  async write(block: Buffer, position: number): Promise<void> {
    try {
      for (let done = 0; done < block.length; ) {
        const { bytesWritten } = await this.fh.write(block, done, block.length - done, position + done);
        if (bytesWritten === 0) throw Object.assign(new Error(`no byte of ${this.path} written at ${position + done}`), { code: 'ENOSPC' });
        done += bytesWritten;
      }
    } catch (err) {
      throw await this.noSpace(err);
    }
  }

  async sync(): Promise<void> {
    try {
      await this.fh.sync();
    } catch (err) {
      throw await this.noSpace(err);
    }
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

  /** `err` as a NoSpaceError if it is one, with the bytes the file still needs: its size less what it holds. */
  private async noSpace(err: unknown): Promise<unknown> {
    const held = await this.fh.stat().then((s) => s.blocks * 512, () => 0);
    return asNoSpace(err, this.path, Math.max(0, this.length - held));
  }
}
