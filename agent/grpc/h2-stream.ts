/**
 * One HTTP/2 stream of the gRPC transport's server connection (h2-connection.ts):
 * the request's bytes in, the answer's headers, data and trailers out, within
 * the peer's flow-control windows. Header blocks come pre-encoded (hpack.ts):
 * a gRPC server sends the same few blocks on almost every call.
 */
import { Frame, FRAME_HEADER, headerFrames, writeHeader } from './h2-frames.js';

/** What a stream needs of its connection. */
export interface StreamOwner {
  /** Bytes the connection may still send before the peer's WINDOW_UPDATE. */
  sendWindow: number;
  readonly peerMaxFrame: number;
  send(bytes: Buffer): void;
  /** The stream could not send all its data for lack of connection window. */
  blocked(stream: H2Stream): void;
  /** The stream sent RST_STREAM with `code`, or ended both ways: forget it. */
  ended(stream: H2Stream, resetCode: number | undefined): void;
}

export class H2Stream {
  headersSent = false;
  /** The client has sent END_STREAM: every request byte is in. */
  remoteEnded = false;
  /** This side has sent END_STREAM, or has it queued behind data waiting for window. */
  localEnded = false;
  closed = false;
  onData: ((chunk: Buffer) => void) | undefined;
  onEnd: (() => void) | undefined;
  /** Received bytes not yet given back with a WINDOW_UPDATE. */
  recvUnacked = 0;
  private closeListeners: (() => void)[] = [];
  /** Data waiting for window, then the trailers' frames. */
  private pending: Buffer[] = [];
  private trailers: Buffer | undefined;

  constructor(
    readonly id: number,
    private readonly owner: StreamOwner,
    /** Bytes this stream may still send (the peer's SETTINGS_INITIAL_WINDOW_SIZE and its updates). */
    public sendWindow: number,
    /** Bytes the peer may still send on this stream. */
    public recvWindow: number,
  ) {}

  onClose(listener: () => void): void {
    if (this.closed) listener();
    else this.closeListeners.push(listener);
  }

  /** A response of headers alone, ending the stream (gRPC's trailers-only answer). */
  respondOnly(block: Buffer): void {
    if (this.localEnded || this.closed) return;
    this.headersSent = true;
    this.localEnded = true;
    this.owner.send(headerFrames(this.id, block, true, this.owner.peerMaxFrame));
    this.settle();
  }

  respond(block: Buffer): void {
    if (this.headersSent || this.closed) return;
    this.headersSent = true;
    this.owner.send(headerFrames(this.id, block, false, this.owner.peerMaxFrame));
  }

  write(data: Uint8Array): void {
    if (this.localEnded || this.closed || data.length === 0) return;
    this.pending.push(Buffer.from(data.buffer, data.byteOffset, data.length));
    this.flush();
  }

  /** Ends the stream with trailers, sent once any data waiting for window is out. */
  end(trailerBlock: Buffer): void {
    if (this.localEnded || this.closed) return;
    this.localEnded = true;
    this.trailers = headerFrames(this.id, trailerBlock, true, this.owner.peerMaxFrame);
    this.flush();
  }

  /**
   * A unary answer: headers, one message, trailers. In one write when the
   * windows and the frame size allow it (the common case), else through
   * respond, write and end.
   */
  answer(headBlock: Buffer, message: Buffer, trailerBlock: Buffer): void {
    if (this.headersSent || this.closed) return;
    const owner = this.owner;
    const n = message.length;
    if (n > owner.peerMaxFrame || n > this.sendWindow || n > owner.sendWindow) {
      this.respond(headBlock);
      this.write(message);
      return this.end(trailerBlock);
    }
    this.headersSent = true;
    this.localEnded = true;
    this.sendWindow -= n;
    owner.sendWindow -= n;
    const head = headerFrames(this.id, headBlock, false, owner.peerMaxFrame);
    const tail = headerFrames(this.id, trailerBlock, true, owner.peerMaxFrame);
    const out = Buffer.allocUnsafe(head.length + FRAME_HEADER + n + tail.length);
    head.copy(out, 0);
    writeHeader(out, head.length, n, Frame.DATA, 0, this.id);
    message.copy(out, head.length + FRAME_HEADER);
    tail.copy(out, head.length + FRAME_HEADER + n);
    owner.send(out);
    this.settle();
  }

  /** RST_STREAM: the stream ends here, whatever was still to send. */
  reset(code: number): void {
    if (this.closed) return;
    this.pending = [];
    this.trailers = undefined;
    this.close(code);
  }

  /** Sends what the windows allow; the rest waits for WINDOW_UPDATE (the connection calls flush again). */
  flush(): void {
    const owner = this.owner;
    while (this.pending.length > 0) {
      const allowed = Math.min(this.sendWindow, owner.sendWindow, owner.peerMaxFrame);
      if (allowed <= 0) {
        // Only the connection's window needs a call back; a stream's own WINDOW_UPDATE flushes it.
        if (owner.sendWindow <= 0) owner.blocked(this);
        return;
      }
      const chunk = this.pending[0] as Buffer;
      const n = Math.min(chunk.length, allowed);
      const head = Buffer.allocUnsafe(FRAME_HEADER);
      writeHeader(head, 0, n, Frame.DATA, 0, this.id);
      owner.send(head);
      owner.send(n === chunk.length ? chunk : chunk.subarray(0, n));
      if (n === chunk.length) this.pending.shift();
      else this.pending[0] = chunk.subarray(n);
      this.sendWindow -= n;
      owner.sendWindow -= n;
    }
    if (this.trailers) {
      owner.send(this.trailers);
        this.trailers = undefined;
      this.settle();
    }
  }

  /** The client's END_STREAM. */
  receiveEnd(): void {
    if (this.remoteEnded || this.closed) return;
    this.remoteEnded = true;
    this.onEnd?.();
    this.settle();
  }

  /** Closed by the connection (it ended) or by the peer's RST_STREAM: nothing is sent. */
  drop(): void {
    if (this.closed) return;
    this.pending = [];
    this.trailers = undefined;
    this.close(undefined);
  }

  /** Both sides ended, nothing left to send: the stream is over. */
  private settle(): void {
    if (this.remoteEnded && this.localEnded && this.trailers === undefined && this.pending.length === 0) this.close(undefined);
  }

  private close(resetCode: number | undefined): void {
    this.closed = true;
    this.onData = undefined;
    this.onEnd = undefined;
    this.owner.ended(this, resetCode);
    const listeners = this.closeListeners;
    this.closeListeners = [];
    for (const listener of listeners) listener();
  }
}
