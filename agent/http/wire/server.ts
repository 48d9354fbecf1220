import { createServer, type AddressInfo, type Server } from 'node:net';
import { Connection, type WireLimits, type WireRequest, type WireResponse } from './connection.js';
import type { WireError } from './head.js';

export type { WireRequest, WireResponse } from './connection.js';
export { WireError } from './head.js';

export interface WireServerOptions extends Partial<Omit<WireLimits, 'bodyLimitBytes'>> {
  bodyLimitBytes: number;
  onRequest(req: WireRequest, res: WireResponse): void;
  /** A request the server refused itself (400, 408, 413 before the handler, 431, 501, 505), for the log. */
  onRefused?(err: WireError): void;
  /** The handler threw; the request got a 500. */
  onHandlerError?(err: unknown): void;
}

/** node:http's defaults, except the keep-alive timeout: clients and proxies commonly idle 60 s. */
const DEFAULTS = { maxHeaderBytes: 16 * 1024, headersTimeoutMs: 60_000, requestTimeoutMs: 300_000, keepAliveTimeoutMs: 65_000 };
const SWEEP_MS = 1000;

/**
 * HTTP/1.1 server for the local inference API, straight on node:net. Each
 * request reaches the handler once, with its whole body (up to the limit);
 * the handler answers with one send(). No stream objects per request and one
 * write per answer: a no-op server on it costs 9-10 µs of CPU per request
 * (64 keep-alive clients, most of it the kernel's TCP) where node:http costs
 * 14-16, and with small models that difference, not the model, sets the rate.
 *
 * Covered: keep-alive and HTTP/1.0, pipelining (answers in order), chunked
 * bodies, Expect: 100-continue, HEAD, absolute-form targets; strict parsing
 * with 400/413/417/431/501/505 answers; header, body and idle timeouts; a
 * client that does not read its answers stops being read from. Not covered,
 * being no use to an inference API: Upgrade, CONNECT, trailers' contents.
 */
export class WireServer {
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  private readonly limits: WireLimits;
  private sweeper: NodeJS.Timeout | undefined;
  private draining = false;

  constructor(private readonly options: WireServerOptions) {
    this.limits = {
      bodyLimitBytes: options.bodyLimitBytes,
      maxHeaderBytes: options.maxHeaderBytes ?? DEFAULTS.maxHeaderBytes,
      headersTimeoutMs: options.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs,
      requestTimeoutMs: options.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs,
      keepAliveTimeoutMs: options.keepAliveTimeoutMs ?? DEFAULTS.keepAliveTimeoutMs,
    };
    const hooks = {
      onRequest: (req: WireRequest, res: WireResponse) => options.onRequest(req, res),
      onRefused: (err: WireError) => options.onRefused?.(err),
      onHandlerError: (err: unknown) => options.onHandlerError?.(err),
      draining: () => this.draining,
      closed: (c: Connection) => this.connections.delete(c),
    };
    this.server = createServer({ noDelay: true }, (socket) => {
      if (this.draining) {
        socket.destroy();
        return;
      }
      this.connections.add(new Connection(socket, this.limits, hooks));
    });
  }

  listen(port: number, host: string): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.sweeper = setInterval(() => this.sweep(), SWEEP_MS).unref();
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  get address(): AddressInfo | undefined {
    return (this.server.address() as AddressInfo | null) ?? undefined;
  }

  /** Open connections, for tests and the drain. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Stops accepting connections; idle ones close now, the others after the
   * answer to the request they are on. Resolves once every connection closed.
   */
  close(): Promise<void> {
    this.draining = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.connections) c.drain();
    return closed.finally(() => clearInterval(this.sweeper));
  }

  /** Closes every connection at once, answered or not. */
  destroyAll(): void {
    for (const c of this.connections) c.socket.destroy();
  }

  private sweep(): void {
    const now = Date.now();
    for (const c of this.connections) c.sweep(now);
  }
}
