/**
 * HTTP/2 framing (RFC 9113 section 4 and 6): the frame types, flags, error
 * codes and settings the gRPC transport uses, and the bytes of the frames it
 * sends. h2-connection.ts reads frames and keeps the connection's state.
 */

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
export const FRAME_HEADER = 9;

export const Frame = {
  DATA: 0,
  HEADERS: 1,
  PRIORITY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PUSH_PROMISE: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8, PRIORITY: 0x20 } as const;

/** Error codes of RST_STREAM and GOAWAY (RFC 9113 section 7). */
export const H2Error = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  ENHANCE_YOUR_CALM: 0xb,
} as const;

export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

/** The largest flow-control window (2^31 - 1). */
export const MAX_WINDOW = 0x7fffffff;
/** What a peer may send before it has our SETTINGS, and the frame size we take. */
export const DEFAULT_WINDOW = 65_535;
export const DEFAULT_MAX_FRAME = 16_384;

/** A connection-level failure: GOAWAY with `code`, then the connection closes. */
export class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** Takes one frame read off the wire; false stops the reading (the connection ended). */
export type FrameVisitor = (type: number, flags: number, stream: number, payload: Buffer) => boolean | void;

/**
 * Hands the whole frames at the start of `buf` to `visit`, in order, and returns the offset where
 * reading stopped: the start of a frame not yet whole, or the frame after the one `visit` stopped on.
 * A frame declaring more than `maxFrame` bytes is a FRAME_SIZE_ERROR.
 */
export function readFrames(buf: Buffer, maxFrame: number, visit: FrameVisitor): number {
  let at = 0;
  while (buf.length - at >= FRAME_HEADER) {
    const length = (buf[at]! << 16) | (buf[at + 1]! << 8) | buf[at + 2]!;
    if (length > maxFrame) throw new ConnectionError(H2Error.FRAME_SIZE_ERROR, `frame of ${length} bytes is over SETTINGS_MAX_FRAME_SIZE (${maxFrame})`);
    if (buf.length - at < FRAME_HEADER + length) break;
    const type = buf[at + 3]!;
    const flags = buf[at + 4]!;
    const stream = buf.readUInt32BE(at + 5) & 0x7fffffff;
    const payload = buf.subarray(at + FRAME_HEADER, at + FRAME_HEADER + length);
    at += FRAME_HEADER + length;
    if (visit(type, flags, stream, payload) === false) break;
  }
  return at;
}

/** One frame: the 9-byte header and the payload, in one buffer. */
export function frame(type: number, flags: number, stream: number, payload?: Uint8Array): Buffer {
  const length = payload?.length ?? 0;
  const out = Buffer.allocUnsafe(FRAME_HEADER + length);
  writeHeader(out, 0, length, type, flags, stream);
  if (payload) out.set(payload, FRAME_HEADER);
  return out;
}

export function writeHeader(out: Buffer, at: number, length: number, type: number, flags: number, stream: number): void {
  out[at] = length >>> 16;
  out[at + 1] = (length >>> 8) & 0xff;
  out[at + 2] = length & 0xff;
  out[at + 3] = type;
  out[at + 4] = flags;
  out.writeUInt32BE(stream, at + 5);
}

export function settingsFrame(values: readonly (readonly [number, number])[]): Buffer {
  const payload = Buffer.allocUnsafe(values.length * 6);
  values.forEach(([id, value], i) => {
    payload.writeUInt16BE(id, i * 6);
    payload.writeUInt32BE(value, i * 6 + 2);
  });
  return frame(Frame.SETTINGS, 0, 0, payload);
}

export function windowUpdate(stream: number, increment: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(increment, 0);
  return frame(Frame.WINDOW_UPDATE, 0, stream, payload);
}

export function rstStream(stream: number, code: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32BE(code, 0);
  return frame(Frame.RST_STREAM, 0, stream, payload);
}

/** GOAWAY with a debug text (RFC 9113 6.8: opaque, for diagnostics; it never carries secrets here). */
export function goAway(lastStream: number, code: number, debug = ''): Buffer {
  const text = Buffer.from(debug.slice(0, 256), 'utf8');
  const payload = Buffer.allocUnsafe(8 + text.length);
  payload.writeUInt32BE(lastStream, 0);
  payload.writeUInt32BE(code, 4);
  text.copy(payload, 8);
  return frame(Frame.GOAWAY, 0, 0, payload);
}

/**
 * A header block as HEADERS and, past the peer's frame size, CONTINUATION
 * frames: one buffer, so nothing can come between them on the wire.
 */
export function headerFrames(stream: number, block: Buffer, endStream: boolean, maxFrame: number): Buffer {
  const frames = Math.max(1, Math.ceil(block.length / maxFrame));
  const out = Buffer.allocUnsafe(block.length + frames * FRAME_HEADER);
  let at = 0;
  for (let i = 0, from = 0; i < frames; i++, from += maxFrame) {
    const part = Math.min(maxFrame, block.length - from);
    const last = i === frames - 1;
    const type = i === 0 ? Frame.HEADERS : Frame.CONTINUATION;
    const flags = (last ? Flag.END_HEADERS : 0) | (i === 0 && endStream ? Flag.END_STREAM : 0);
    writeHeader(out, at, part, type, flags, stream);
    block.copy(out, at + FRAME_HEADER, from, from + part);
    at += FRAME_HEADER + part;
  }
  return out;
}
