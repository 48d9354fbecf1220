/**
 * A keep-alive HTTP/1.1 connection for the load generator, on a bare
 * net.Socket: requests are encoded once, up front, and a response is read
 * just far enough to know its status and where it ends (Content-Length).
 * node:http's client costs about 20 µs of CPU per request, which caps one
 * generator core near 40k req/s, below what a batching server answers; this
 * costs a few µs. One request at a time per connection (no pipelining), like
 * the closed-loop clients it serves. Responses without Content-Length
 * (chunked) are refused with an error rather than guessed at.
 */
import { connect, type Socket } from 'node:net';

export interface RawRequest {
  path: string;
  headers: Record<string, string | number>;
  body: Buffer;
}

/** Request line, headers and body as the bytes to write. */
export function encodeRequest(host: string, port: number, req: RawRequest): Buffer {
  let head = `POST ${req.path} HTTP/1.1\r\nHost: ${host}:${port}\r\nContent-Length: ${req.body.length}\r\n`;
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.toLowerCase() !== 'content-length') head += `${name}: ${value}\r\n`;
  }
  return Buffer.concat([Buffer.from(`${head}\r\n`, 'latin1'), req.body]);
}

const HEADER_END = Buffer.from('\r\n\r\n');
const MAX_HEADER_BYTES = 64 * 1024;

/** Where the response at the start of `buf` ends and its status, or undefined while incomplete. */
export function responseExtent(buf: Buffer): { status: number; end: number } | undefined {
  const headerEnd = buf.indexOf(HEADER_END);
  if (headerEnd < 0) {
    if (buf.length > MAX_HEADER_BYTES) throw new Error(`response headers longer than ${MAX_HEADER_BYTES} bytes`);
    return undefined;
  }
  const head = buf.toString('latin1', 0, headerEnd);
  const status = Number(head.slice(9, 12));
  if (!head.startsWith('HTTP/1.') || !Number.isInteger(status)) throw new Error(`not an HTTP/1.x response: ${JSON.stringify(head.slice(0, 40))}`);
  const m = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
  if (!m) throw new Error(`HTTP ${status} response without Content-Length (chunked responses are not supported)`);
  const end = headerEnd + HEADER_END.length + Number(m[1]);
  return buf.length >= end ? { status, end } : undefined;
}

export class RawConnection {
  private socket: Socket | undefined;
  private pending: { resolve: (status: number) => void; reject: (err: Error) => void; timer: NodeJS.Timeout } | undefined;
  private buffered: Buffer = Buffer.alloc(0);

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly timeoutMs: number,
  ) {}

  /** Sends one encoded request; resolves with the response's status once it has been read whole. */
  send(encoded: Buffer): Promise<number> {
    if (this.pending) return Promise.reject(new Error('RawConnection: one request at a time'));
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending = { resolve, reject, timer };
      this.open().write(encoded);
    });
  }

  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
  }

  private open(): Socket {
    if (this.socket && !this.socket.destroyed) return this.socket;
    const socket = connect({ host: this.host, port: this.port, noDelay: true });
    this.buffered = Buffer.alloc(0);
    // A socket given up on (closed after an error) may still report: only the current one counts.
    socket.on('data', (chunk: Buffer) => {
      if (this.socket === socket) this.onData(chunk);
    });
    socket.on('error', (err) => {
      if (this.socket === socket) this.fail(err);
    });
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      this.fail(new Error('connection closed before the response'));
    });
    this.socket = socket;
    return socket;
  }

  private onData(chunk: Buffer): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    let extent: { status: number; end: number } | undefined;
    try {
      extent = responseExtent(this.buffered);
    } catch (err) {
      this.fail(err as Error);
      this.close();
      return;
    }
    if (!extent) return;
    const pending = this.pending;
    if (!pending || extent.end !== this.buffered.length) {
      this.fail(new Error('response bytes beyond the one request in flight'));
      this.close();
      return;
    }
    this.buffered = Buffer.alloc(0);
    this.pending = undefined;
    clearTimeout(pending.timer);
    pending.resolve(extent.status);
  }

  private fail(err: Error): void {
    const pending = this.pending;
    if (!pending) return;
    this.pending = undefined;
    clearTimeout(pending.timer);
    this.close();
    pending.reject(err);
  }
}
