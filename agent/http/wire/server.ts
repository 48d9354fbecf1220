import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type SecureContextOptions, type Server as TlsServer } from 'node:tls';
import { Connection, type WireLimits, type WireRequest, type WireResponse } from './connection.js';
import type { WireError } from './head.js';

export type { WireRequest, WireResponse } from './connection.js';
export { WireError } from './head.js';

export interface WireServerOptions extends Partial<Omit<WireLimits, 'bodyLimitBytes'>> {
  bodyLimitBytes: number;
  /** Open connections at most; see WireServer. Default 1024. */
  maxConnections?: number;
  /** What sets maxConnections, for the 503 at the cap; default `http.maxConnections`. */
  maxConnectionsSource?: string;
  onRequest(req: WireRequest, res: WireResponse): void;
  /** A request the server refused itself (400, 408, 413 before the handler, 431, 501, 505), for the log. */
  onRefused?(err: WireError): void;
  /** The handler threw; the request got a 500. */
  onHandlerError?(err: unknown): void;
  /** At maxConnections, a new connection closed the longest waiting one (`evicted`) or was answered 503 (`refused`). */
  onConnectionLimit?(action: 'evicted' | 'refused'): void;
  /** Accepting a connection failed (e.g. EMFILE: out of file descriptors); the server keeps listening. */
  onAcceptError?(err: Error): void;
  /** Serve HTTPS with this certificate and key; setSecureContext() replaces them for new connections. */
  tls?: SecureContextOptions;
}

/** A TLS handshake must finish in this time: a socket still shaking hands is not yet counted against maxConnections. */
const TLS_HANDSHAKE_MS = 10_000;

/** node:http's defaults, except the keep-alive timeout: clients and proxies commonly idle 60 s. */
const DEFAULTS = { maxHeaderBytes: 16 * 1024, headersTimeoutMs: 60_000, requestTimeoutMs: 300_000, keepAliveTimeoutMs: 65_000 };
const SWEEP_MS = 1000;
const DEFAULT_MAX_CONNECTIONS = 1024;
/** Refused sockets read and drop input this long at most, so the 503 is not lost to a reset. */
const REFUSE_LINGER_MS = 1000;
/** Refused sockets lingering at once; beyond this a refused socket is closed at once (file descriptors are the point). */
const MAX_REFUSING = 64;
const OVERLOADED_BODY = (max: number, source: string): string =>
  JSON.stringify({ error: `too many connections: all ${max} (${source}) have a request in progress; retry later` });

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
 *
 * At most maxConnections are open, so idle or slowloris connections cannot
 * use up the process's file descriptors. At the cap a new connection closes
 * the one that has waited longest without a request in hand (idle since its
 * last answer, or still sending its head; like nginx reusing keep-alive
 * connections), and is refused with a 503 only when every connection has a
 * request being read or answered. A fresh connection is the newest, so a
 * flood evicts its own older connections before it reaches a real client's.
 */
export class WireServer {
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  private readonly limits: WireLimits;
  private readonly maxConnections: number;
  private sweeper: NodeJS.Timeout | undefined;
  private draining = false;
  private refusing = 0;
  private peak = 0;

  constructor(private readonly options: WireServerOptions) {
    this.limits = {
      bodyLimitBytes: options.bodyLimitBytes,
      maxHeaderBytes: options.maxHeaderBytes ?? DEFAULTS.maxHeaderBytes,
      headersTimeoutMs: options.headersTimeoutMs ?? DEFAULTS.headersTimeoutMs,
      requestTimeoutMs: options.requestTimeoutMs ?? DEFAULTS.requestTimeoutMs,
      keepAliveTimeoutMs: options.keepAliveTimeoutMs ?? DEFAULTS.keepAliveTimeoutMs,
    };
    this.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    const hooks = {
      onRequest: (req: WireRequest, res: WireResponse) => options.onRequest(req, res),
      onRefused: (err: WireError) => options.onRefused?.(err),
      onHandlerError: (err: unknown) => options.onHandlerError?.(err),
      draining: () => this.draining,
      closed: (c: Connection) => this.connections.delete(c),
    };
    const accept = (socket: Socket): void => {
      if (this.draining) {
        socket.destroy();
        return;
      }
      if (this.connections.size >= this.maxConnections && !this.evict()) {
        this.refuse(socket);
        return;
      }
      this.connections.add(new Connection(socket, this.limits, hooks));
      if (this.connections.size > this.peak) this.peak = this.connections.size;
    };
    // A TLS socket reaches `accept` once its handshake is done; the HTTP layer above reads and writes it like a plain one.
    this.server = options.tls ? createTlsServer({ ...options.tls, noDelay: true, handshakeTimeout: TLS_HANDSHAKE_MS }, accept) : createServer({ noDelay: true }, accept);
  }

  /** New TLS connections use this certificate and key from now on (a reload); open ones keep theirs. */
  setSecureContext(options: SecureContextOptions): void {
    if (!this.options.tls) throw new Error('setSecureContext on a server without TLS');
    (this.server as TlsServer).setSecureContext(options);
  }

  listen(port: number, host: string): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        // Node reports a failed accept as a server 'error': unheard, it would end the process.
        this.server.on('error', (err) => this.options.onAcceptError?.(err));
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

  /** The most connections that were ever open at once. */
  get peakConnectionCount(): number {
    return this.peak;
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

  /** Closes the connection that has waited longest without a request in hand; false when every one has one. */
  private evict(): boolean {
    let oldest: Connection | undefined;
    let since = Infinity;
    for (const c of this.connections) {
      const waiting = c.waitingSince;
      if (waiting !== undefined && waiting < since) {
        since = waiting;
        oldest = c;
      }
    }
    if (!oldest) return false;
    // Out of the count now; destroy() frees the descriptor at once, 'close' follows.
    this.connections.delete(oldest);
    oldest.socket.destroy();
    this.options.onConnectionLimit?.('evicted');
    return true;
  }

  /** Answers 503 and closes, reading (and dropping) what the client sends meanwhile for a moment. */
  private refuse(socket: Socket): void {
    this.options.onConnectionLimit?.('refused');
    if (this.refusing >= MAX_REFUSING) {
      socket.destroy();
      return;
    }
    this.refusing++;
    const timer = setTimeout(() => socket.destroy(), REFUSE_LINGER_MS);
    socket.once('close', () => {
      this.refusing--;
      clearTimeout(timer);
    });
    socket.on('error', () => socket.destroy());
    socket.on('data', () => undefined);
    const body = OVERLOADED_BODY(this.maxConnections, this.options.maxConnectionsSource ?? 'http.maxConnections');
    socket.end(`HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n${body}`);
  }

  private sweep(): void {
    const now = Date.now();
    for (const c of this.connections) c.sweep(now);
  }
}
