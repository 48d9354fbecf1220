/**
 * One gRPC call over an HTTP/2 stream (grpc/doc/PROTOCOL-HTTP2.md): the request
 * headers checked (method, content-type, path, bearer token, grpc-timeout,
 * grpc-encoding), the one request message read from its 5-byte length prefix,
 * the handler run, and the answer written as message frames and a grpc-status
 * trailer. transport.ts owns the listeners and connections.
 */
import { gunzipSync, inflateSync } from 'node:zlib';
import type { ApiAccess } from '../access/api-access.js';
import { EdgefleetError, badRequest, unsupported } from '../errors.js';
import { isOpen, UNAUTHORIZED } from './access.js';
import type { RequestHeaders } from './h2-connection.js';
import { H2Error } from './h2-frames.js';
import type { H2Stream } from './h2-stream.js';
import { HpackEncoder } from './hpack.js';
import { grpcError, Status, type CallStatus } from './status.js';

/** How a handler answers a unary call: `reply(null, message)`, or `reply(error)` for the status that error maps to. */
export type Reply = (err: unknown, message?: unknown) => void;

/** The answers of a server-streaming call. */
export interface ResponseStream {
  write(message: unknown): void;
  /** Ends the call with status OK. */
  end(): void;
  /** Runs once when the call is over: ended here, cancelled by the client, or its connection gone. */
  onClose(listener: () => void): void;
}

/** A method of a served service, with the protobuf coding of its messages (protos.ts). */
export type Route = {
  /** Request bytes to the object handlers read; throws on bytes that are not the message. */
  decode(bytes: Buffer): unknown;
  /** A handler's answer to bytes. */
  encode(message: unknown): Uint8Array;
  /** The request message's full name, for errors. */
  requestType: string;
} & (
  | { kind: 'unary'; handle(request: unknown, reply: Reply): void }
  | { kind: 'stream'; handle(request: unknown, out: ResponseStream): void }
  /** Client and server streaming: `open` once, then each request message as it arrives, then the end of the requests. */
  | { kind: 'bidi'; open(out: ResponseStream): { message(request: unknown): void; end(): void } }
);

export interface CallOptions {
  routes: ReadonlyMap<string, Route>;
  maxMessageBytes: number;
  access: ApiAccess | undefined;
  /** A fault of the agent's own while answering (a handler that threw, an answer that would not encode); the call ends INTERNAL. */
  onFault(err: unknown, path: string): void;
}

/**
 * The encodings a compressed request message may use. Decompressed in line (the messages of a
 * call stay in order); clients send uncompressed messages unless told otherwise.
 */
const DECOMPRESS = { gzip: gunzipSync, deflate: inflateSync } as const;
const ACCEPT_ENCODING = 'identity,gzip,deflate';
const PREFIX = 5;
/** setTimeout's longest delay; a longer grpc-timeout is as good as none. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

type Fields = [string, string][];
const hpack = new HpackEncoder();
const RESPONSE_FIELDS: Fields = [
  [':status', '200'],
  ['content-type', 'application/grpc'],
  ['grpc-accept-encoding', ACCEPT_ENCODING],
];
/** The blocks nearly every call sends, encoded once. */
const RESPONSE_BLOCK = hpack.encode(RESPONSE_FIELDS);
const OK_TRAILERS = hpack.encode([['grpc-status', '0']]);

function statusFields(status: CallStatus): Fields {
  return [
    ['grpc-status', String(status.code)],
    ['grpc-message', percentEncode(status.details)],
  ];
}

/** grpc-message is percent-encoded: bytes outside printable ASCII, and "%" itself. */
function percentEncode(text: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(text)) return text;
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

/** grpc-timeout ("100m", "5S", ...) in milliseconds; undefined when absent. */
export function parseTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!m) throw badRequest(`grpc-timeout "${value}" is not a timeout: 1 to 8 digits and a unit (H, M, S, m, u or n)`);
  return Number(m[1]) * (UNIT_MS[m[2] as string] as number);
}

/** Messages up to this size go out in one buffer with their prefix; larger ones are not copied. */
const COPY_LIMIT = 64 * 1024;

/** The 5-byte prefix (compressed flag, big-endian length), with the message when it is small enough to copy. */
function prefixed(message: Uint8Array): Buffer {
  const small = message.length <= COPY_LIMIT;
  const head = Buffer.allocUnsafe(small ? PREFIX + message.length : PREFIX);
  head[0] = 0;
  head.writeUInt32BE(message.length, 1);
  if (small) head.set(message, PREFIX);
  return head;
}

/** Writes one message on a stream whose headers are out; `head` is its prefixed() when already made. */
function writeMessage(stream: H2Stream, message: Uint8Array, head = prefixed(message)): void {
  stream.write(head);
  if (head.length === PREFIX) stream.write(message);
}

/** Answers a call that never reached its handler, or gets refused, in a response of headers alone. */
function refuse(stream: H2Stream, status: CallStatus): void {
  if (stream.headersSent || stream.closed) return;
  stream.respondOnly(hpack.encode([...RESPONSE_FIELDS, ...statusFields(status)]));
  stopUpload(stream);
}

/** A client still sending a request that is already answered is told to stop (RST_STREAM NO_ERROR, as the spec allows). */
function stopUpload(stream: H2Stream): void {
  if (!stream.remoteEnded) stream.reset(H2Error.NO_ERROR);
}

/** Handles one HTTP/2 stream as a gRPC call; `headerList` is the size of its header fields and the most this server takes. */
export function serveCall(stream: H2Stream, headers: RequestHeaders, options: CallOptions, headerList: { bytes: number; limit: number }): void {
  if (headerList.bytes > headerList.limit) {
    const details = `request metadata of ${headerList.bytes} bytes is over the limit of ${headerList.limit} (header fields, counted as HTTP/2 does: name, value and 32 bytes each)`;
    return refuse(stream, { code: Status.RESOURCE_EXHAUSTED, details });
  }
  const method = headers[':method'];
  if (method !== 'POST') {
    stream.respondOnly(hpack.encode([[':status', '405'], ...statusFields({ code: Status.UNIMPLEMENTED, details: `gRPC calls are POST requests, not ${method ?? 'none'}` })]));
    return stopUpload(stream);
  }
  const type = headers['content-type'] ?? '';
  if (!/^application\/grpc([+;]|$)/.test(type)) {
    // The spec's answer to a request that is not gRPC at all: HTTP 415.
    const details = `content-type "${type}" is not gRPC; send application/grpc`;
    stream.respondOnly(hpack.encode([[':status', '415'], ...statusFields({ code: Status.INTERNAL, details })]));
    return stopUpload(stream);
  }
  if (!/^application\/grpc(\+proto)?(;|$)/.test(type)) {
    return refuse(stream, { code: Status.UNIMPLEMENTED, details: `content-type "${type}": only protobuf messages are served (application/grpc or application/grpc+proto)` });
  }
  const path = headers[':path'] ?? '';
  const route = options.routes.get(path);
  if (!route) return refuse(stream, { code: Status.UNIMPLEMENTED, details: `method ${path} is not served here` });
  const auth = headers.authorization;
  if (options.access?.tokens && !isOpen(path) && !options.access.allows(auth)) return refuse(stream, { code: Status.UNAUTHENTICATED, details: UNAUTHORIZED });
  let timeoutMs: number | undefined;
  try {
    timeoutMs = parseTimeout(headers['grpc-timeout']);
  } catch (err) {
    return refuse(stream, grpcError(err));
  }
  const encoding = headers['grpc-encoding'] ?? 'identity';
  if (encoding !== 'identity' && !(encoding in DECOMPRESS)) {
    return refuse(stream, grpcError(unsupported(`grpc-encoding "${encoding}" is not supported; send messages uncompressed or as ${ACCEPT_ENCODING}`)));
  }
  new Call(stream, route, path, options, encoding, timeoutMs).read();
}

/** A call whose headers passed: reads its messages, runs the handler, answers once. */
class Call {
  /** Request bytes not yet read as a message. */
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The length the prefix of the message being read declares, once its 5 bytes are in. */
  private need: number | undefined;
  private flag = 0;
  /** A unary or server-streaming call's one request, once read. */
  private request: { value: unknown } | undefined;
  private bidi: { message(request: unknown): void; end(): void } | undefined;
  private over = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly stream: H2Stream,
    private readonly route: Route,
    private readonly path: string,
    private readonly options: CallOptions,
    private readonly encoding: string,
    timeoutMs: number | undefined,
  ) {
    if (timeoutMs !== undefined && timeoutMs <= MAX_TIMER_MS) {
      this.timer = setTimeout(() => this.finish({ code: Status.DEADLINE_EXCEEDED, details: `deadline of ${timeoutMs} ms exceeded` }), timeoutMs);
    }
    stream.onClose(() => {
      clearTimeout(this.timer);
      this.over = true;
    });
  }

  read(): void {
    const { stream, route } = this;
    if (route.kind === 'bidi') this.guard(() => (this.bidi = route.open(this.responseStream())));
    stream.onData = (chunk) => this.take(chunk);
    stream.onEnd = () => this.ended();
  }

  /** Splits the request bytes into messages: a 5-byte prefix (compressed flag, big-endian length), then the message. */
  private take(chunk: Buffer): void {
    if (this.over) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.need === undefined) {
        if (this.buffered < PREFIX) return;
        const head = (this.chunks[0] as Buffer).length >= PREFIX ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
        this.flag = head[0] as number;
        this.need = head.readUInt32BE(1);
        if (this.need > this.options.maxMessageBytes) {
          const err = new EdgefleetError('PAYLOAD_TOO_LARGE', `request message of ${this.need} bytes is over the limit of ${this.options.maxMessageBytes} (grpc.maxMessageBytes)`);
          return this.finish(grpcError(err));
        }
      }
      if (this.buffered < PREFIX + this.need) return;
      // One copy at most, once the whole message is in: never a concat per chunk of a large message.
      const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks, this.buffered);
      const message = all.subarray(PREFIX, PREFIX + this.need);
      const rest = all.subarray(PREFIX + this.need);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
      this.need = undefined;
      this.message(this.flag, message);
      if (this.over) return;
    }
  }

  private message(flag: number, bytes: Buffer): void {
    let request: unknown;
    try {
      request = this.route.decode(this.plain(flag, bytes));
    } catch (err) {
      const failure = err instanceof EdgefleetError ? err : badRequest(`request is not a valid ${this.route.requestType} message: ${(err as Error).message}`);
      return this.finish(grpcError(failure));
    }
    if (this.bidi) return this.guard(() => this.bidi?.message(request));
    if (this.request) return this.finish(grpcError(badRequest(`${this.path} takes one request message; the client sent more`)));
    this.request = { value: request };
  }

  /** A message's bytes, decompressed when its flag says so. */
  private plain(flag: number, bytes: Buffer): Buffer {
    if (flag === 0) return bytes;
    if (flag !== 1) throw badRequest(`request message has compressed-flag byte ${flag}; it must be 0 or 1`);
    const decompress = DECOMPRESS[this.encoding as keyof typeof DECOMPRESS] as typeof gunzipSync | undefined;
    if (!decompress) throw badRequest('request message is marked compressed, but the call has no grpc-encoding header');
    try {
      return decompress(bytes, { maxOutputLength: this.options.maxMessageBytes });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
        throw new EdgefleetError('PAYLOAD_TOO_LARGE', `request message decompresses to more than the limit of ${this.options.maxMessageBytes} bytes (grpc.maxMessageBytes)`);
      }
      throw badRequest(`request message does not decompress as ${this.encoding}: ${(err as Error).message}`);
    }
  }

  /** The client has sent everything: run a unary or server-streaming handler on its one message. */
  private ended(): void {
    if (this.over) return;
    if (this.buffered > 0) {
      const why = this.need === undefined ? `${this.buffered} of the 5 bytes of its length prefix arrived` : `its length prefix says ${this.need} bytes and ${this.buffered - PREFIX} arrived`;
      return this.finish(grpcError(badRequest(`request message is truncated: ${why}`)));
    }
    const route = this.route;
    if (route.kind === 'bidi') return this.guard(() => this.bidi?.end());
    if (!this.request) return this.finish(grpcError(badRequest(`${this.path} takes one request message; the request had none`)));
    const request = this.request.value;
    if (route.kind === 'stream') return this.guard(() => route.handle(request, this.responseStream()));
    this.guard(() =>
      route.handle(request, (err, message) => {
        if (err === null || err === undefined) this.answer(message);
        else this.finish(grpcError(err));
      }),
    );
  }

  /** Runs handler code: a throw ends this call INTERNAL and is logged, never reaching the connection's reader. */
  private guard(run: () => void): void {
    try {
      run();
    } catch (err) {
      this.options.onFault(err, this.path);
      this.finish(grpcError(err));
    }
  }

  /** A handler's answer as bytes; undefined, and the call ended INTERNAL, when it will not encode. */
  private encode(message: unknown): Uint8Array | undefined {
    try {
      return this.route.encode(message);
    } catch (err) {
      this.options.onFault(err, this.path);
      this.finish(grpcError(err));
      return undefined;
    }
  }

  /** The one answer of a unary call. */
  private answer(message: unknown): void {
    if (this.over) return;
    const bytes = this.encode(message);
    if (!bytes) return;
    this.over = true;
    clearTimeout(this.timer);
    const { stream } = this;
    const head = prefixed(bytes);
    if (head.length > PREFIX) return stream.answer(RESPONSE_BLOCK, head, OK_TRAILERS);
    stream.respond(RESPONSE_BLOCK);
    writeMessage(stream, bytes, head);
    stream.end(OK_TRAILERS);
  }

  private responseStream(): ResponseStream {
    const { stream } = this;
    return {
      write: (message) => {
        if (this.over || stream.closed) return;
        const bytes = this.encode(message);
        if (!bytes) return;
        stream.respond(RESPONSE_BLOCK);
        writeMessage(stream, bytes);
      },
      end: () => {
        if (this.over || stream.closed) return;
        if (!stream.headersSent) return this.finish({ code: Status.OK, details: '' });
        this.over = true;
        clearTimeout(this.timer);
        stream.end(OK_TRAILERS);
      },
      onClose: (listener) => stream.onClose(listener),
    };
  }

  /** Ends the call with a status: trailers after any message sent, or a response of headers alone. */
  private finish(status: CallStatus): void {
    if (this.over) return;
    this.over = true;
    clearTimeout(this.timer);
    const { stream } = this;
    if (stream.closed) return;
    if (!stream.headersSent) return refuse(stream, status);
    // A streaming call already answering: its trailers carry the status.
    stream.end(hpack.encode(statusFields(status)));
    stopUpload(stream);
  }
}
