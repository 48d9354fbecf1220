import { WireError } from './head.js';

const SIZE = 0;
const DATA = 1;
const DATA_END = 2;
const TRAILER = 3;
const DONE = 4;

/** Longest chunk-size line (with extensions) or trailer line taken. */
const MAX_LINE = 4096;
const HEX_SIZE = /^([0-9a-fA-F]{1,13})[ \t]*(?:;.*)?$/;

/**
 * Decodes a chunked request body (RFC 9112 section 7.1) as it arrives, in
 * pieces of any size. Chunk extensions and trailer fields are read and
 * dropped. Throws WireError on anything malformed.
 */
export class ChunkedDecoder {
  /** The body so far, as views of the buffers pushed. */
  readonly parts: Buffer[] = [];
  size = 0;
  private state = SIZE;
  /** Bytes left in the current chunk. */
  private left = 0;
  /** A size or trailer line split across pushes. */
  private line = '';

  get done(): boolean {
    return this.state === DONE;
  }

  /**
   * Consumes bytes of `buf` from `from`; returns where it stopped: the end of
   * `buf`, or right after the body when it ended within it.
   */
  push(buf: Buffer, from: number): number {
    let p = from;
    while (p < buf.length && this.state !== DONE) {
      if (this.state === DATA) {
        const n = Math.min(this.left, buf.length - p);
        this.parts.push(buf.subarray(p, p + n));
        this.size += n;
        this.left -= n;
        p += n;
        if (this.left === 0) this.state = DATA_END;
        continue;
      }
      const eol = buf.indexOf(10, p); // LF
      const stop = eol < 0 ? buf.length : eol + 1;
      this.line += buf.toString('latin1', p, stop);
      p = stop;
      if (this.line.length > MAX_LINE) throw new WireError(400, 'chunked body has a size or trailer line over 4 KiB');
      if (eol < 0) break;
      if (!this.line.endsWith('\r\n')) throw new WireError(400, 'chunked body has a line not ended by CRLF');
      const text = this.line.slice(0, -2);
      this.line = '';
      this.takeLine(text);
    }
    return p;
  }

  private takeLine(text: string): void {
    switch (this.state) {
      case SIZE: {
        const size = HEX_SIZE.exec(text);
        if (!size) throw new WireError(400, `chunked body has a bad chunk size line "${text.slice(0, 40)}"`);
        this.left = parseInt(size[1] as string, 16);
        this.state = this.left === 0 ? TRAILER : DATA;
        return;
      }
      case DATA_END:
        if (text !== '') throw new WireError(400, 'chunked body has a chunk longer than its size');
        this.state = SIZE;
        return;
      case TRAILER:
        if (text === '') this.state = DONE;
        return;
    }
  }
}
