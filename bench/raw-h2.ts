/**
 * A gRPC connection for the load generator on a bare net.Socket, the HTTP/2
 * counterpart of raw-http.ts: a unary call is its HEADERS and DATA frames,
 * written once per call from bytes made up front (the header block holds only
 * literals, so it never changes), and the answer is read just far enough to
 * know its grpc-status and where it ends. node:http2's client costs the
 * generator about 90 µs per call (a Duplex per stream, header objects,
 * events), as much as the server it measures; this costs a few.
 *
 * A real HTTP/2 peer all the same: it sends the preface and SETTINGS, answers
 * the server's SETTINGS and PING, honours the connection's and the stream's
 * send windows and SETTINGS_MAX_FRAME_SIZE, opens its receive windows wide,
 * decodes every header block with HPACK (the server may index), and fails the
 * call on RST_STREAM, GOAWAY or a closed socket. One call at a time per
 * connection, like the closed-loop clients it serves.
 */
import { connect, type Socket } from 'node:net';
import { DEFAULT_MAX_FRAME, DEFAULT_WINDOW, Flag, frame, Frame, MAX_WINDOW, PREFACE, readFrames, Setting, settingsFrame, windowUpdate } from '../agent/grpc/h2-frames.js';
import { HpackDecoder, HpackEncoder } from '../agent/grpc/hpack.js';

/** Receive windows this client opens: as wide as HTTP/2 allows, topped up once half is used. */
const RECV_WINDOW = MAX_WINDOW;

interface Pending {
  stream: number;
  /** The DATA still to send when a window was too small for it. */
  body: Buffer;
  status: string | undefined;
  message: string;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class RawGrpcConnection {
  private readonly socket: Socket;
  private readonly decoder = new HpackDecoder();
  private readonly block: Buffer;
  private rest: Buffer | undefined;
  private nextStream = 1;
  private sendWindow = DEFAULT_WINDOW;
  private peerInitialWindow = DEFAULT_WINDOW;
  private streamWindow = DEFAULT_WINDOW;
  private peerMaxFrame = DEFAULT_MAX_FRAME;
  private recvUnacked = 0;
  /** A header block in progress (HEADERS without END_HEADERS, then CONTINUATION). */
  private header: { stream: number; parts: Buffer[]; endStream: boolean } | undefined;
  private pending: Pending | undefined;
  private failure: Error | undefined;

  constructor(
    target: { host: string; port: number } | { path: string },
    path: string,
    private readonly timeoutMs: number,
  ) {
    this.block = new HpackEncoder().encode([
      [':method', 'POST'],
      [':scheme', 'http'],
      [':path', path],
      [':authority', 'path' in target ? 'localhost' : `${target.host}:${target.port}`],
      ['content-type', 'application/grpc'],
      ['te', 'trailers'],
    ]);
    this.socket = connect('path' in target ? { path: target.path } : { host: target.host, port: target.port, noDelay: true });
    this.socket.on('data', (chunk: Buffer) => this.read(chunk));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('close', () => this.fail(new Error('connection closed')));
    this.socket.write(Buffer.concat([PREFACE, settingsFrame([[Setting.ENABLE_PUSH, 0], [Setting.INITIAL_WINDOW_SIZE, RECV_WINDOW]]), windowUpdate(0, RECV_WINDOW - DEFAULT_WINDOW)]));
  }

  /** One unary call with `framed` (the 5-byte prefix and the message); resolves on grpc-status 0. */
  call(framed: Buffer): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.pending) return Promise.reject(new Error('RawGrpcConnection: one call at a time'));
    const stream = this.nextStream;
    this.nextStream += 2;
    this.streamWindow = this.peerInitialWindow;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending = { stream, body: framed, status: undefined, message: '', resolve, reject, timer };
      this.socket.write(frame(Frame.HEADERS, Flag.END_HEADERS, stream, this.block));
      this.flush();
    });
  }

  close(): void {
    this.socket.destroy();
  }

  /** Sends as much of the pending call's DATA as the windows allow, END_STREAM on the last frame. */
  private flush(): void {
    const call = this.pending;
    if (!call || call.body.length === 0) return;
    const out: Buffer[] = [];
    let body = call.body;
    while (body.length > 0) {
      const size = Math.min(body.length, this.peerMaxFrame, this.sendWindow, this.streamWindow);
      if (size <= 0) break;
      this.sendWindow -= size;
      this.streamWindow -= size;
      out.push(frame(Frame.DATA, size === body.length ? Flag.END_STREAM : 0, call.stream, body.subarray(0, size)));
      body = body.subarray(size);
    }
    call.body = body;
    if (out.length > 0) this.socket.write(out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out));
  }

  private read(chunk: Buffer): void {
    const buf = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    this.rest = undefined;
    let at: number;
    try {
      at = readFrames(buf, DEFAULT_MAX_FRAME, (type, flags, id, payload) => this.frame(type, flags, id, payload));
    } catch (err) {
      return this.fail(err as Error);
    }
    if (at < buf.length) this.rest = Buffer.from(buf.subarray(at));
  }

  private frame(type: number, flags: number, id: number, payload: Buffer): void {
    const call = this.pending?.stream === id ? this.pending : undefined;
    switch (type) {
      case Frame.SETTINGS:
        if (flags & Flag.ACK) return;
        for (let i = 0; i + 6 <= payload.length; i += 6) {
          const key = payload.readUInt16BE(i);
          const value = payload.readUInt32BE(i + 2);
          if (key === Setting.INITIAL_WINDOW_SIZE) {
            this.streamWindow += value - this.peerInitialWindow;
            this.peerInitialWindow = value;
          } else if (key === Setting.MAX_FRAME_SIZE) this.peerMaxFrame = value;
        }
        this.socket.write(frame(Frame.SETTINGS, Flag.ACK, 0));
        return this.flush();
      case Frame.PING:
        if (!(flags & Flag.ACK)) this.socket.write(frame(Frame.PING, Flag.ACK, 0, payload));
        return;
      case Frame.WINDOW_UPDATE: {
        const increment = payload.readUInt32BE(0) & 0x7fffffff;
        if (id === 0) this.sendWindow += increment;
        else if (call) this.streamWindow += increment;
        return this.flush();
      }
      case Frame.DATA:
        this.recvUnacked += payload.length;
        if (this.recvUnacked >= RECV_WINDOW / 2) {
          this.socket.write(windowUpdate(0, this.recvUnacked));
          this.recvUnacked = 0;
        }
        if (call && flags & Flag.END_STREAM) this.settle(call);
        return;
      case Frame.HEADERS:
      case Frame.CONTINUATION: {
        if (type === Frame.HEADERS) this.header = { stream: id, parts: [headersPayload(flags, payload)], endStream: (flags & Flag.END_STREAM) !== 0 };
        else if (this.header?.stream === id) this.header.parts.push(payload);
        else throw new Error(`CONTINUATION on stream ${id} without its HEADERS`);
        if (!(flags & Flag.END_HEADERS)) return;
        const { parts, endStream, stream } = this.header;
        this.header = undefined;
        // Decoded whatever the stream: HPACK's table must see every block.
        const fields = this.decoder.decode(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts));
        const owner = this.pending?.stream === stream ? this.pending : undefined;
        if (!owner) return;
        for (let i = 0; i < fields.length; i += 2) {
          if (fields[i] === 'grpc-status') owner.status = fields[i + 1];
          else if (fields[i] === 'grpc-message') owner.message = fields[i + 1] as string;
        }
        // Trailers, or a trailers-only answer, end the stream.
        if (endStream) this.settle(owner);
        return;
      }
      case Frame.RST_STREAM:
        if (call) this.settle(call, new Error(`stream reset by the server, HTTP/2 error ${payload.readUInt32BE(0)}`));
        return;
      case Frame.GOAWAY:
        throw new Error(`GOAWAY from the server, HTTP/2 error ${payload.readUInt32BE(4)}: ${payload.subarray(8).toString('utf8')}`);
      default:
        return;
    }
  }

  private settle(call: Pending, err?: Error): void {
    this.pending = undefined;
    clearTimeout(call.timer);
    if (err) return call.reject(err);
    if (call.status === '0') return call.resolve();
    call.reject(new Error(`grpc-status ${call.status ?? 'missing'}: ${decodeURIComponent(call.message)}`));
  }

  private fail(err: Error): void {
    this.failure ??= err;
    if (this.pending) this.settle(this.pending, err);
    this.socket.destroy();
  }
}

/** A HEADERS payload without its padding and priority fields. */
function headersPayload(flags: number, payload: Buffer): Buffer {
  let start = 0;
  let end = payload.length;
  if (flags & Flag.PADDED) {
    start = 1;
    end -= payload[0] ?? 0;
  }
  if (flags & Flag.PRIORITY) start += 5;
  return payload.subarray(start, end);
}
