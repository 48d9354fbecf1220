import { createHash, type Hash } from 'node:crypto';

/** Verified blocks kept for the running whole-file hash while an earlier one is missing. */
export const MAX_HASH_AHEAD_BYTES = 8 * 1024 * 1024;

/**
 * The whole-file sha256, fed block by block in order as they are verified,
 * so that the check at the end needs no second pass over the file. Blocks
 * verified ahead of a gap wait in memory up to `maxAheadBytes`; past that (a
 * block keeps failing to come) the running hash is dropped, and the file is
 * read back at the end instead (readBackSha256), as it is on a resumed pull.
 */
export class InOrderHash {
  private hash: Hash | undefined = createHash('sha256');
  private next = 0;
  private readonly ahead = new Map<number, Buffer>();
  private aheadBytes = 0;

  constructor(private readonly maxAheadBytes = MAX_HASH_AHEAD_BYTES) {}

  add(i: number, block: Buffer): void {
    if (!this.hash) return;
    if (i !== this.next) {
      this.ahead.set(i, block);
      this.aheadBytes += block.length;
      if (this.aheadBytes > this.maxAheadBytes) this.drop();
      return;
    }
    this.hash.update(block);
    this.next++;
    for (let b = this.ahead.get(this.next); b; b = this.ahead.get(this.next)) {
      this.ahead.delete(this.next);
      this.aheadBytes -= b.length;
      this.hash.update(b);
      this.next++;
    }
  }

  /** The hex digest once blocks 0 to total-1 have all gone in; undefined if not, or if it was dropped. */
  digest(total: number): string | undefined {
    if (!this.hash || this.next !== total) return undefined;
    return this.hash.digest('hex');
  }

  private drop(): void {
    this.hash = undefined;
    this.ahead.clear();
    this.aheadBytes = 0;
  }
}

/** The part of StagingFile read back; resolves with the bytes read into `buffer`, 0 at the end. */
export interface ReadAt {
  read(buffer: Buffer, position: number): Promise<number>;
}

/** sha256 of the first `size` bytes of a file (fewer if it ends sooner), read back in 1 MiB chunks. */
export async function readBackSha256(file: ReadAt, size: number): Promise<string> {
  const hash = createHash('sha256');
  const chunk = Buffer.alloc(1 << 20);
  for (let position = 0; position < size; ) {
    const bytesRead = await file.read(chunk.subarray(0, Math.min(chunk.length, size - position)), position);
    if (bytesRead === 0) break;
    hash.update(chunk.subarray(0, bytesRead));
    position += bytesRead;
  }
  return hash.digest('hex');
}
