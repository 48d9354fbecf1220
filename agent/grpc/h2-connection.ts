/**
 * The server side of one HTTP/2 connection (RFC 9113) for the gRPC transport:
 * the preface and SETTINGS, frames read into streams (h2-stream.ts), header
 * blocks through HPACK (hpack.ts), flow control both ways, PING, GOAWAY.
 * Written for gRPC's use of HTTP/2 and no more: no server push, priorities
 * ignored (RFC 9113 allows it), one request per stream.
 *
 * Hostile peers are bounded: header blocks (CONTINUATION floods), concurrent
 * streams, windows, frame sizes and the rate of streams a client resets
 * (the "rapid reset" attack) all have limits; breaking the protocol ends the
 * connection with GOAWAY and the error's code.
 */
import type { Socket } from 'node:net';
import {
  ConnectionError,
  DEFAULT_MAX_FRAME,
  DEFAULT_WINDOW,
  Flag,
  frame,
  Frame,
  goAway,
  H2Error,
  MAX_WINDOW,
  PREFACE,
  readFrames,
  rstStream,
  Setting,
  settingsFrame,
  windowUpdate,
} from './h2-frames.js';
import { H2Stream, type StreamOwner } from './h2-stream.js';
import { HpackDecoder, HpackError } from './hpack.js';

export interface H2Limits {
  /** SETTINGS_INITIAL_WINDOW_SIZE: bytes a client may send on a stream before we give window back. */
  streamWindow: number;
  /** The connection's receive window. */
  connectionWindow: number;
  maxConcurrentStreams: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE, and the bound on a decoded request header list. */
  maxHeaderListSize: number;
  /** Time a new connection has to send the preface and its SETTINGS. */
  prefaceTimeoutMs: number;
}

/** A request's header fields: names lowercase, repeated fields joined with ", ". */
export type RequestHeaders = Record<string, string>;

/** A header block (HEADERS and its CONTINUATIONs) may not grow past this, encoded. */
const MAX_HEADER_BLOCK = 64 * 1024;
/**
 * A header list over SETTINGS_MAX_HEADER_LIST_SIZE refuses its stream (call.ts answers
 * RESOURCE_EXHAUSTED, the connection's other calls go on); one over this many times it
 * ends the connection: a few bytes of HPACK indexes can stand for megabytes of fields.
 */
const HEADER_LIST_HARD_FACTOR = 4;
/**
 * CONTINUATION frames a header block may take. Empty ones never grow the block, so its
 * size alone bounds nothing (the 2024 CONTINUATION floods); 8 is nghttp2's limit, which
 * node:http2, this transport's predecessor, applied.
 */
const MAX_CONTINUATIONS = 8;
/** Streams a client may reset in one second before the connection is cut (CVE-2023-44487). */
const RESETS_PER_SECOND = 1000;
/** Control answers (PING and SETTINGS ACKs) are not queued past this while the peer does not read. */
const MAX_UNREAD_BYTES = 16 * 1024 * 1024;
/** Header fields a request may not carry in HTTP/2 (RFC 9113 8.2.2). */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);
const REQUEST_PSEUDO = new Set([':method', ':scheme', ':path', ':authority']);
/** RFC 9113 8.2.1: a field name is lowercase token characters; a value holds no NUL, CR or LF and no whitespace at either end. */
const FIELD_NAME = /^[a-z0-9!#$%&'*+.^_`|~-]+$/;
const BAD_VALUE = /[\0\r\n]|^[ \t]|[ \t]$/;

export class H2Connection implements StreamOwner {
  sendWindow = DEFAULT_WINDOW;
  peerMaxFrame = DEFAULT_MAX_FRAME;
  private peerInitialWindow = DEFAULT_WINDOW;
  private recvWindow: number;
  private recvUnacked = 0;
  private readonly streams = new Map<number, H2Stream>();
  private readonly waiting = new Set<H2Stream>();
  private readonly decoder: HpackDecoder;
  private lastStream = 0;
  private prefaceSeen = false;
  private settingsSeen = false;
  /** Bytes of an unfinished frame (or preface) carried to the next read. */
  private rest: Buffer | undefined;
  /** A header block waiting for its CONTINUATION frames. */
  private block: { stream: number; parts: Buffer[]; size: number; endStream: boolean } | undefined;
  private goingAway = false;
  private dead = false;
  private corked = false;
  private resets = 0;
  private resetsSince = 0;
  private readonly prefaceTimer: NodeJS.Timeout;
  private readonly closeListeners: (() => void)[] = [];

  constructor(
    private readonly socket: Socket,
    private readonly limits: H2Limits,
    /** A new stream; `listBytes` is its header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (name + value + 32 per field). */
    private readonly onStream: (stream: H2Stream, headers: RequestHeaders, listBytes: number) => void,
  ) {
    // A list past MAX_HEADER_LIST_SIZE still decodes (the stream alone is refused: onStream gets its size);
    // past this multiple of it, the block is a decompression bomb and the connection ends.
    this.decoder = new HpackDecoder({ maxListSize: limits.maxHeaderListSize * HEADER_LIST_HARD_FACTOR });
    this.recvWindow = limits.connectionWindow;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.read(chunk));
    socket.on('error', () => {}); // a reset from the peer: 'close' follows
    socket.once('close', () => this.teardown());
    this.prefaceTimer = setTimeout(
      () => this.fail(H2Error.PROTOCOL_ERROR, `no HTTP/2 preface and SETTINGS within ${limits.prefaceTimeoutMs} ms`),
      limits.prefaceTimeoutMs,
    );
    this.prefaceTimer.unref();
    this.send(
      settingsFrame([
        [Setting.ENABLE_PUSH, 0],
        [Setting.MAX_CONCURRENT_STREAMS, limits.maxConcurrentStreams],
        [Setting.INITIAL_WINDOW_SIZE, limits.streamWindow],
        [Setting.MAX_HEADER_LIST_SIZE, limits.maxHeaderListSize],
      ]),
    );
    if (limits.connectionWindow > DEFAULT_WINDOW) this.send(windowUpdate(0, limits.connectionWindow - DEFAULT_WINDOW));
  }

  onClose(listener: () => void): void {
    if (this.dead && this.socket.destroyed) listener();
    else this.closeListeners.push(listener);
  }

  /** GOAWAY: streams already started finish, new ones are refused; the connection ends when the last one does. */
  shutdown(): void {
    if (this.goingAway || this.dead) return;
    this.goingAway = true;
    this.send(goAway(this.lastStream, H2Error.NO_ERROR));
    if (this.streams.size === 0) this.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Queues bytes for the socket; everything queued in one tick goes out in one write. */
  send(bytes: Buffer): void {
    if (this.dead) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(this.uncork);
    }
    this.socket.write(bytes);
  }

  private readonly uncork = (): void => {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  };

  blocked(stream: H2Stream): void {
    this.waiting.add(stream);
  }

  ended(stream: H2Stream, resetCode: number | undefined): void {
    this.streams.delete(stream.id);
    this.waiting.delete(stream);
    if (resetCode !== undefined) this.send(rstStream(stream.id, resetCode));
    if (this.goingAway && this.streams.size === 0) this.end();
  }

  private read(chunk: Buffer): void {
    if (this.dead) return;
    let buf = this.rest ? Buffer.concat([this.rest, chunk]) : chunk;
    this.rest = undefined;
    try {
      if (!this.prefaceSeen) {
        if (buf.length < PREFACE.length) {
          if (!PREFACE.subarray(0, buf.length).equals(buf)) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'not an HTTP/2 connection preface: gRPC needs HTTP/2');
          this.rest = buf;
          return;
        }
        if (!PREFACE.equals(buf.subarray(0, PREFACE.length))) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'not an HTTP/2 connection preface: gRPC needs HTTP/2');
        this.prefaceSeen = true;
        buf = buf.subarray(PREFACE.length);
      }
      const at = readFrames(buf, DEFAULT_MAX_FRAME, this.visit);
      if (!this.dead && at < buf.length) this.rest = buf.subarray(at);
    } catch (err) {
      if (err instanceof ConnectionError) return this.fail(err.code, err.message);
      if (err instanceof HpackError) return this.fail(H2Error.COMPRESSION_ERROR, err.message);
      throw err;
    }
  }

  private readonly visit = (type: number, flags: number, id: number, payload: Buffer): boolean => {
    this.frame(type, flags, id, payload);
    return !this.dead;
  };

  private frame(type: number, flags: number, id: number, payload: Buffer): void {
    if (this.block && type !== Frame.CONTINUATION) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `frame type ${type} in the middle of a header block; CONTINUATION expected`);
    if (!this.settingsSeen && (type !== Frame.SETTINGS || flags & Flag.ACK)) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'the first frame after the preface must be SETTINGS');
    switch (type) {
      case Frame.DATA:
        return this.data(flags, id, payload);
      case Frame.HEADERS:
        return this.headers(flags, id, payload);
      case Frame.CONTINUATION:
        return this.continuation(flags, id, payload);
      case Frame.RST_STREAM:
        return this.rst(id, payload);
      case Frame.SETTINGS:
        return this.settings(flags, id, payload);
      case Frame.PING:
        if (id !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'PING on a stream');
        if (payload.length !== 8) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, `PING of ${payload.length} bytes; it takes 8`);
        if (!(flags & Flag.ACK)) this.control(frame(Frame.PING, Flag.ACK, 0, payload));
        return;
      case Frame.GOAWAY:
        if (id !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'GOAWAY on a stream');
        // The client opens no more streams; those in progress still get their answers.
        this.goingAway = true;
        if (this.streams.size === 0) this.end();
        return;
      case Frame.WINDOW_UPDATE:
        return this.windowUpdate(id, payload);
      case Frame.PRIORITY:
        if (id === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        if (payload.length !== 5) this.resetStream(id, H2Error.FRAME_SIZE_ERROR);
        return;
      case Frame.PUSH_PROMISE:
        throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'a client may not send PUSH_PROMISE');
      default:
        return; // unknown frame types are ignored (RFC 9113 4.1)
    }
  }

  private data(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'DATA on stream 0');
    const data = unpad(flags, payload, 0);
    // Flow control counts the whole frame, padding included, on any stream.
    this.recvWindow -= payload.length;
    if (this.recvWindow < 0) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'DATA beyond the connection window');
    this.recvUnacked += payload.length;
    if (this.recvUnacked >= this.limits.connectionWindow / 2) {
      this.send(windowUpdate(0, this.recvUnacked));
      this.recvWindow += this.recvUnacked;
      this.recvUnacked = 0;
    }
    const stream = this.streams.get(id);
    if (!stream) {
      if (id > this.lastStream) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `DATA on stream ${id}, which was never opened`);
      return; // a stream already answered or reset: what the client still had in flight is dropped
    }
    if (stream.remoteEnded) return stream.reset(H2Error.STREAM_CLOSED);
    stream.recvWindow -= payload.length;
    if (stream.recvWindow < 0) return stream.reset(H2Error.FLOW_CONTROL_ERROR);
    const end = (flags & Flag.END_STREAM) !== 0;
    stream.recvUnacked += payload.length;
    if (!end && stream.recvUnacked >= this.limits.streamWindow / 2) {
      this.send(windowUpdate(id, stream.recvUnacked));
      stream.recvWindow += stream.recvUnacked;
      stream.recvUnacked = 0;
    }
    if (data.length > 0) stream.onData?.(data);
    if (end) stream.receiveEnd();
  }

  private headers(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'HEADERS on stream 0');
    const block = unpad(flags, payload, flags & Flag.PRIORITY ? 5 : 0);
    const endStream = (flags & Flag.END_STREAM) !== 0;
    if (flags & Flag.END_HEADERS) return this.headerBlock(id, block, endStream);
    this.block = { stream: id, parts: [block], size: block.length, endStream };
  }

  private continuation(flags: number, id: number, payload: Buffer): void {
    const block = this.block;
    if (!block || block.stream !== id) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `CONTINUATION on stream ${id} without a header block in progress there`);
    block.size += payload.length;
    if (block.size > MAX_HEADER_BLOCK) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, `header block over ${MAX_HEADER_BLOCK} bytes`);
    block.parts.push(payload);
    if (block.parts.length > 1 + MAX_CONTINUATIONS) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, `header block in more than ${MAX_CONTINUATIONS} CONTINUATION frames`);
    if (!(flags & Flag.END_HEADERS)) return;
    this.block = undefined;
    this.headerBlock(id, Buffer.concat(block.parts), block.endStream);
  }

  /** A whole header block: one HEADERS frame (16 KiB at most) or one continuation() bounded. */
  private headerBlock(id: number, block: Buffer, endStream: boolean): void {
    // Decoded whatever becomes of the stream: HPACK's table must see every block.
    const fields = this.decoder.decode(block);
    const existing = this.streams.get(id);
    if (existing) {
      // Trailers from the client: they must end its side, and come before its END_STREAM (RFC 9113 5.1: half-closed, remote).
      if (existing.remoteEnded) return existing.reset(H2Error.STREAM_CLOSED);
      if (!endStream) return existing.reset(H2Error.PROTOCOL_ERROR);
      return existing.receiveEnd();
    }
    if (id % 2 === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `stream ${id} is even: a client opens odd streams`);
    if (id <= this.lastStream) throw new ConnectionError(H2Error.STREAM_CLOSED, `HEADERS on stream ${id}, which is closed`);
    this.lastStream = id;
    if (this.goingAway || this.streams.size >= this.limits.maxConcurrentStreams) return this.resetStream(id, H2Error.REFUSED_STREAM);
    const headers = requestHeaders(fields);
    if (!headers) return this.resetStream(id, H2Error.PROTOCOL_ERROR);
    const stream = new H2Stream(id, this, this.peerInitialWindow, this.limits.streamWindow);
    this.streams.set(id, stream);
    this.onStream(stream, headers, listSize(fields));
    if (endStream) stream.receiveEnd();
  }

  private rst(id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
    if (payload.length !== 4) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, `RST_STREAM of ${payload.length} bytes; it takes 4`);
    if (id > this.lastStream) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `RST_STREAM on stream ${id}, which was never opened`);
    const stream = this.streams.get(id);
    if (!stream) return;
    const now = performance.now();
    if (now - this.resetsSince > 1000) {
      this.resetsSince = now;
      this.resets = 0;
    }
    if (++this.resets > RESETS_PER_SECOND) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, `more than ${RESETS_PER_SECOND} streams reset in a second`);
    stream.drop();
  }

  private settings(flags: number, id: number, payload: Buffer): void {
    if (id !== 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & Flag.ACK) {
      if (payload.length !== 0) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, `SETTINGS of ${payload.length} bytes, not a multiple of 6`);
    let opened = false;
    for (let at = 0; at < payload.length; at += 6) {
      const key = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      if (key === Setting.INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE ${value} is over 2^31-1`);
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const stream of this.streams.values()) {
          stream.sendWindow += delta;
          if (stream.sendWindow > MAX_WINDOW) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'SETTINGS_INITIAL_WINDOW_SIZE takes a stream window over 2^31-1');
        }
        opened ||= delta > 0;
      } else if (key === Setting.MAX_FRAME_SIZE) {
        if (value < DEFAULT_MAX_FRAME || value > 0xffffff) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `SETTINGS_MAX_FRAME_SIZE ${value} is outside 16384 to 16777215`);
        this.peerMaxFrame = value;
      } else if (key === Setting.ENABLE_PUSH && value > 1) {
        throw new ConnectionError(H2Error.PROTOCOL_ERROR, `SETTINGS_ENABLE_PUSH ${value} is neither 0 nor 1`);
      }
      // HEADER_TABLE_SIZE needs nothing: hpack.ts's encoder keeps no dynamic table. The rest is advisory.
    }
    if (!this.settingsSeen) {
      this.settingsSeen = true;
      clearTimeout(this.prefaceTimer);
    }
    this.control(frame(Frame.SETTINGS, Flag.ACK, 0));
    if (opened) for (const stream of this.streams.values()) stream.flush();
  }

  private windowUpdate(id: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, `WINDOW_UPDATE of ${payload.length} bytes; it takes 4`);
    const increment = payload.readUInt32BE(0) & 0x7fffffff;
    if (id === 0) {
      if (increment === 0) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'WINDOW_UPDATE of 0 on the connection');
      this.sendWindow += increment;
      if (this.sendWindow > MAX_WINDOW) throw new ConnectionError(H2Error.FLOW_CONTROL_ERROR, 'connection window over 2^31-1');
      const waiting = [...this.waiting];
      this.waiting.clear();
      for (const stream of waiting) stream.flush();
      return;
    }
    const stream = this.streams.get(id);
    if (!stream) {
      if (id > this.lastStream) throw new ConnectionError(H2Error.PROTOCOL_ERROR, `WINDOW_UPDATE on stream ${id}, which was never opened`);
      return;
    }
    if (increment === 0) return stream.reset(H2Error.PROTOCOL_ERROR);
    stream.sendWindow += increment;
    if (stream.sendWindow > MAX_WINDOW) return stream.reset(H2Error.FLOW_CONTROL_ERROR);
    stream.flush();
  }

  /** RST_STREAM for a stream that never got an H2Stream (refused, or its headers malformed). */
  private resetStream(id: number, code: number): void {
    const stream = this.streams.get(id);
    if (stream) stream.reset(code);
    else this.send(rstStream(id, code));
  }

  /** An answer to the peer's control frame; a peer that sends them without reading what comes back is cut off. */
  private control(bytes: Buffer): void {
    if (this.socket.writableLength > MAX_UNREAD_BYTES) throw new ConnectionError(H2Error.ENHANCE_YOUR_CALM, 'the peer does not read what it asks for');
    this.send(bytes);
  }

  /** A connection error: GOAWAY with its code, then the connection closes. */
  private fail(code: number, message: string): void {
    if (this.dead) return;
    this.send(goAway(this.lastStream, code, message));
    this.end();
  }

  private end(): void {
    if (this.dead) return;
    this.dead = true;
    clearTimeout(this.prefaceTimer);
    this.uncork();
    this.socket.end();
    // A peer that never closes its side is not waited for.
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.dropStreams();
  }

  private teardown(): void {
    this.dead = true;
    clearTimeout(this.prefaceTimer);
    this.dropStreams();
    const listeners = this.closeListeners.splice(0);
    for (const listener of listeners) listener();
  }

  private dropStreams(): void {
    for (const stream of [...this.streams.values()]) stream.drop();
  }
}

/** A DATA or HEADERS payload without its padding (and `skip` bytes of priority fields). */
function unpad(flags: number, payload: Buffer, skip: number): Buffer {
  if (!(flags & Flag.PADDED)) {
    if (skip > payload.length) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, 'frame shorter than its priority fields');
    return skip === 0 ? payload : payload.subarray(skip);
  }
  const pad = payload[0] ?? 0;
  if (payload.length === 0 || 1 + skip + pad > payload.length) throw new ConnectionError(H2Error.PROTOCOL_ERROR, 'padding longer than the frame');
  return payload.subarray(1 + skip, payload.length - pad);
}

function listSize(fields: readonly string[]): number {
  let size = 0;
  for (const field of fields) size += field.length;
  return size + 16 * fields.length; // 32 per name and value pair
}

/** A request's fields as headers; undefined when they break HTTP/2's rules for requests (the stream is reset). */
function requestHeaders(fields: readonly string[]): RequestHeaders | undefined {
  const headers: RequestHeaders = {};
  let regular = false;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i] as string;
    const value = fields[i + 1] as string;
    if (BAD_VALUE.test(value)) return undefined;
    if (name.charCodeAt(0) === 0x3a) {
      // Pseudo-headers: known ones, once each, before any other field.
      if (regular || !REQUEST_PSEUDO.has(name) || headers[name] !== undefined) return undefined;
      headers[name] = value;
      continue;
    }
    regular = true;
    if (!FIELD_NAME.test(name) || CONNECTION_SPECIFIC.has(name) || (name === 'te' && value !== 'trailers')) return undefined;
    const before = headers[name];
    headers[name] = before === undefined ? value : `${before}, ${value}`;
  }
  return headers[':method'] !== undefined && headers[':path'] !== undefined ? headers : undefined;
}
