import type { Socket } from 'node:net';
import { ChunkedDecoder } from './chunked.js';
import { parseHead, WireError, type RequestHead } from './head.js';

/** A request with its whole body read. */
export interface WireRequest {
  readonly method: string;
  /** Path and query, as sent. */
  readonly url: string;
  /** Lower-case field names; repeated fields joined with ", ". */
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** The body passed the limit: `body` is empty and the connection closes after the answer. */
  readonly bodyTooLarge: boolean;
}

/** Answers one request, exactly once; later calls do nothing. */
export interface WireResponse {
  /** Sends status, Content-Type and body (Content-Length is computed); `extra` adds fields (the agent's own constant values, never a client's). */
  send(status: number, contentType: string, body: string | Buffer, extra?: Readonly<Record<string, number | string>>): void;
  /** Whether send() was called (or the connection is gone). */
  readonly sent: boolean;
}

export interface WireLimits {
  bodyLimitBytes: number;
  maxHeaderBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
}

export interface ConnectionHooks {
  onRequest(req: WireRequest, res: WireResponse): void;
  /** A request the wire layer refused itself (malformed, timed out), for the log. */
  onRefused(err: WireError): void;
  /** A handler threw or never answered: the connection answered 500. */
  onHandlerError(err: unknown): void;
  draining(): boolean;
  closed(connection: Connection): void;
}

/** No request bytes yet since the last answer. */
const IDLE = 0;
const HEAD = 1;
const BODY = 2;
/** The handler has the request. */
const BUSY = 3;
/** Answered and closing: further input is read and dropped so the client gets the answer, not a reset. */
const LINGER = 4;
const CLOSED = 5;

/** Lingering reads stop after this long. */
const LINGER_MS = 5000;
/** Bytes read ahead (pipelined requests) while one is being answered, before reading pauses. */
const READ_AHEAD = 64 * 1024;
/** What a client is told of a fault of ours; the log has the rest. */
const INTERNAL = 'internal error; see the agent log';
const CRLF2 = Buffer.from('\r\n\r\n', 'latin1');
const LF2 = Buffer.from('\n\n', 'latin1');

const REASONS: Record<number, string> = {
  100: 'Continue', 200: 'OK', 400: 'Bad Request', 404: 'Not Found', 408: 'Request Timeout', 413: 'Payload Too Large', 417: 'Expectation Failed',
  431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 501: 'Not Implemented', 503: 'Service Unavailable', 505: 'HTTP Version Not Supported',
};

let dateText = '';
let dateAt = 0;
/** The Date field, formatted at most once a second. */
function httpDate(): string {
  const now = Date.now();
  if (now - dateAt >= 1000 || now < dateAt) {
    dateAt = now - (now % 1000);
    dateText = new Date(dateAt).toUTCString();
  }
  return dateText;
}

/**
 * One client connection: reads requests (pipelined ones in order), hands each
 * to the handler with its whole body, writes the answers. Bytes are parsed as
 * they come from the socket; a body that arrives in one read is a view of it.
 */
export class Connection {
  private phase = IDLE;
  /** When the current phase started (Date.now()), for the timeouts. */
  private since = Date.now();
  /** Bytes read and not yet parsed. */
  private pending: Buffer | undefined;
  private head: RequestHead | undefined;
  private parts: Buffer[] = [];
  private size = 0;
  private chunked: ChunkedDecoder | undefined;
  /** Counts requests, so an answer for an earlier one is never taken for the current one. */
  private seq = 0;
  private paused = false;
  private closeAfter = false;
  /** Inside advance(): an answer given synchronously lets its loop go on rather than recursing. */
  private parsing = false;

  constructor(
    readonly socket: Socket,
    private readonly limits: WireLimits,
    private readonly hooks: ConnectionHooks,
  ) {
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.on('error', () => socket.destroy()); // resets and the like: 'close' follows
    socket.on('close', this.onClose);
  }

  get idle(): boolean {
    return this.phase === IDLE && this.pending === undefined;
  }

  /**
   * Since when this connection has held no request the server has taken in:
   * idle since its last answer (or its accept), sending a head since its first
   * byte, or closing after an answer. Undefined while a body is read or a
   * request answered: such a connection is never evicted.
   */
  get waitingSince(): number | undefined {
    return this.phase === BODY || this.phase === BUSY ? undefined : this.since;
  }

  /** Stops after the request in hand, if any; an idle connection closes now. */
  drain(): void {
    this.closeAfter = true;
    if (!this.idle) return;
    this.phase = LINGER; // a request that crosses our end is dropped, not run unanswered
    this.since = Date.now();
    this.socket.end();
  }

  /** Enforces the timeouts; the server calls it about once a second. */
  sweep(now: number): void {
    const age = now - this.since;
    switch (this.phase) {
      case IDLE:
        if (age > this.limits.keepAliveTimeoutMs) this.socket.destroy();
        return;
      case HEAD:
        if (age > this.limits.headersTimeoutMs) this.refuse(new WireError(408, `request head not received within ${this.limits.headersTimeoutMs} ms`));
        return;
      case BODY:
        if (age > this.limits.requestTimeoutMs) this.refuse(new WireError(408, `request body not received within ${this.limits.requestTimeoutMs} ms`));
        return;
      case LINGER:
        if (age > LINGER_MS) this.socket.destroy();
        return;
    }
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.phase >= LINGER) return;
    this.pending = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk]);
    if (this.phase === BUSY) {
      if (this.pending.length > READ_AHEAD) this.pause();
      return;
    }
    this.advance();
  };

  private readonly onDrain = (): void => {
    if (!this.paused || this.phase === BUSY) return;
    this.resume();
    if (this.phase < BUSY && this.pending !== undefined) this.advance();
  };

  private readonly onClose = (): void => {
    this.phase = CLOSED;
    this.pending = undefined;
    this.parts = [];
    this.hooks.closed(this);
  };

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private resume(): void {
    this.paused = false;
    this.socket.resume();
  }

  /** Parses what is pending until a request is complete (and handed over) or more bytes are needed. */
  private advance(): void {
    if (this.parsing) return;
    this.parsing = true;
    try {
      while (this.pending !== undefined && this.phase < BUSY) {
        if (this.phase === BODY) this.readBody(this.pending);
        else if (!this.readHead(this.pending)) return; // the head is not all here yet
      }
    } catch (err) {
      if (err instanceof WireError) {
        this.refuse(err);
      } else {
        // A fault of ours in parsing: this connection gets a 500, the process stays up.
        this.hooks.onHandlerError(err);
        this.refuse(new WireError(500, INTERNAL));
      }
    } finally {
      this.parsing = false;
    }
  }

  /** Reads a head if all of it is in `buf`; false when more bytes are needed. */
  private readHead(buf: Buffer): boolean {
    // RFC 9112 2.2: empty lines before a request line are ignored.
    let start = 0;
    while (start + 1 < buf.length && buf[start] === 13 && buf[start + 1] === 10) start += 2;
    if (this.phase === IDLE) {
      this.phase = HEAD;
      this.since = Date.now();
    }
    const end = buf.indexOf(CRLF2, start);
    if (end < 0 && buf.indexOf(LF2, start) >= 0) throw new WireError(400, 'request head ends its lines with a bare LF; HTTP/1.1 needs CRLF');
    // The head so far, or all of it: either way over the limit is refused.
    if ((end < 0 ? buf.length : end) - start > this.limits.maxHeaderBytes) throw new WireError(431, `request head is larger than ${this.limits.maxHeaderBytes} bytes`);
    if (end < 0) {
      this.pending = start === buf.length ? undefined : buf.subarray(start);
      return false;
    }
    const head = parseHead(buf.toString('latin1', start, end));
    this.head = head;
    this.pending = end + 4 === buf.length ? undefined : buf.subarray(end + 4);
    this.parts = [];
    this.size = 0;
    if (head.framing.kind === 'chunked') {
      this.chunked = new ChunkedDecoder();
    } else {
      this.chunked = undefined;
      if (head.framing.length > this.limits.bodyLimitBytes) {
        this.dispatch(true);
        return true;
      }
      if (head.framing.length === 0) {
        this.dispatch(false);
        return true;
      }
      if (this.pending !== undefined && this.pending.length >= head.framing.length) {
        // The whole body came with the head: the loop in advance() hands over a view of it.
        this.phase = BODY;
        return true;
      }
    }
    if (head.expectContinue) this.socket.write('HTTP/1.1 100 Continue\r\n\r\n');
    this.phase = BODY;
    this.since = Date.now();
    return true;
  }

  private readBody(buf: Buffer): void {
    const head = this.head as RequestHead;
    if (this.chunked) {
      const at = this.chunked.push(buf, 0);
      this.pending = at === buf.length ? undefined : buf.subarray(at);
      if (this.chunked.size > this.limits.bodyLimitBytes) {
        this.pending = undefined;
        this.dispatch(true);
        return;
      }
      if (!this.chunked.done) return;
      this.parts = this.chunked.parts;
      this.size = this.chunked.size;
      this.chunked = undefined;
      this.dispatch(false);
      return;
    }
    const length = (head.framing as { length: number }).length;
    const need = length - this.size;
    if (buf.length <= need) {
      this.parts.push(buf);
      this.size += buf.length;
      this.pending = undefined;
    } else {
      this.parts.push(buf.subarray(0, need));
      this.size = length;
      this.pending = buf.subarray(need);
    }
    if (this.size === length) this.dispatch(false);
  }

  private dispatch(tooLarge: boolean): void {
    const head = this.head as RequestHead;
    const parts = this.parts;
    const body = tooLarge || parts.length === 0 ? EMPTY : parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, this.size);
    this.parts = [];
    this.phase = BUSY;
    if (tooLarge) {
      // The rest of the body is never read: this connection ends with the answer.
      this.closeAfter = true;
      this.pending = undefined;
    }
    const seq = ++this.seq;
    const response = new Response(this, seq, head.method === 'HEAD');
    try {
      this.hooks.onRequest({ method: head.method, url: head.url, headers: head.headers, body, bodyTooLarge: tooLarge }, response);
    } catch (err) {
      this.hooks.onHandlerError(err);
      if (!response.sent) response.send(500, 'application/json', JSON.stringify({ error: INTERNAL }));
    }
  }

  /** Writes the answer to request `seq`, unless that request is no longer the current one (the connection closed). */
  answer(seq: number, headOnly: boolean, status: number, contentType: string, body: string | Buffer, extra: Readonly<Record<string, number | string>> | undefined): void {
    if (seq !== this.seq || this.phase !== BUSY) return;
    const head = this.head as RequestHead;
    const close = this.closeAfter || !head.keepAlive || this.hooks.draining();
    const length = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
    let text = `HTTP/1.1 ${status} ${REASONS[status] ?? ''}\r\nContent-Type: ${contentType}\r\nContent-Length: ${length}\r\nDate: ${httpDate()}\r\n`;
    if (extra) for (const name in extra) text += `${name}: ${extra[name]}\r\n`;
    text += close ? 'Connection: close\r\n\r\n' : `Connection: keep-alive\r\nKeep-Alive: timeout=${Math.ceil(this.limits.keepAliveTimeoutMs / 1000)}\r\n\r\n`;
    const socket = this.socket;
    let flowing: boolean;
    if (headOnly || length === 0) {
      flowing = socket.write(text, 'latin1');
    } else if (typeof body === 'string') {
      flowing = socket.write(text + body, 'utf8');
    } else {
      socket.cork();
      socket.write(text, 'latin1');
      flowing = socket.write(body);
      socket.uncork();
    }
    this.head = undefined;
    this.since = Date.now();
    if (close) {
      this.phase = LINGER;
      this.pending = undefined;
      socket.end();
      if (this.paused) this.resume(); // read and drop what the client still sends
      return;
    }
    this.phase = IDLE;
    if (!flowing) {
      this.pause(); // the client is not reading its answers: read no more requests until it does
      return;
    }
    if (this.paused) this.resume();
    if (this.pending !== undefined) this.advance();
  }

  /** Answers a request the wire layer refuses, and closes. */
  private refuse(err: WireError): void {
    this.hooks.onRefused(err);
    this.head ??= { method: 'GET', url: '', version: '1.1', headers: {}, framing: { kind: 'length', length: 0 }, keepAlive: false, expectContinue: false };
    this.closeAfter = true;
    this.phase = BUSY;
    this.answer(++this.seq, false, err.status, 'application/json', JSON.stringify({ error: err.message }), undefined);
  }
}

class Response implements WireResponse {
  sent = false;

  constructor(
    private readonly connection: Connection,
    private readonly seq: number,
    private readonly headOnly: boolean,
  ) {}

  send(status: number, contentType: string, body: string | Buffer, extra?: Readonly<Record<string, number | string>>): void {
    if (this.sent) return;
    this.sent = true;
    this.connection.answer(this.seq, this.headOnly, status, contentType, body, extra);
  }
}

const EMPTY = Buffer.alloc(0);
