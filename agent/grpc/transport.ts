/**
 * gRPC's transport: the listeners (TCP, with TLS when `api.tls` is set, and
 * the Unix socket) and their HTTP/2 connections (h2-connection.ts); call.ts
 * handles each call. The agent's own HTTP/2 rather than node:http2's: every
 * node:http2 stream is a Duplex with its own headers objects and events, a
 * cost per call larger than a small model's inference (docs/http-api.md#grpc
 * has the numbers), and gRPC needs little of HTTP/2 (no push, no priorities,
 * one request per stream). grpc-js's server, on node:http2, costs more again.
 */
import { lstat, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import type { TlsMaterial } from '../access/tls-material.js';
import { serveCall, type CallOptions } from './call.js';
import { H2Connection, type H2Limits } from './h2-connection.js';

/**
 * Flow-control windows. HTTP/2's default (64 KiB per stream and per connection)
 * makes a client wait a round trip per 64 KiB of a large request tensor; these
 * let a few megabytes be in flight, as gRPC's C core allows its peers.
 */
const LIMITS: H2Limits = {
  streamWindow: 4 * 1024 * 1024,
  connectionWindow: 16 * 1024 * 1024,
  maxConcurrentStreams: 1000,
  // gRPC's own default for metadata is 8 KiB; twice that leaves room for long tokens.
  maxHeaderListSize: 16 * 1024,
  prefaceTimeoutMs: 10_000,
};

type Listener = Server | TlsServer;

export class GrpcTransport {
  private readonly listeners: Listener[] = [];
  private readonly connections = new Set<H2Connection>();
  private readonly unsubscribe: (() => void)[] = [];
  private closing = false;

  private readonly limits: H2Limits;

  /** `limits` replaces some of the HTTP/2 limits (tests use small ones); the defaults suit the agent. */
  constructor(
    private readonly call: CallOptions,
    limits: Partial<H2Limits> = {},
  ) {
    this.limits = { ...LIMITS, ...limits };
  }

  /** Listens on host:port, with TLS when `tls` is given (a reloaded certificate serves new connections); the port bound. */
  async listenTcp(host: string, port: number, tls: TlsMaterial | undefined): Promise<number> {
    let server: Listener;
    if (tls) {
      const secure = createTlsServer({ ...tls.material, ALPNProtocols: ['h2'] });
      this.unsubscribe.push(tls.subscribe((material) => secure.setSecureContext(material)));
      // gRPC over TLS is HTTP/2 chosen by ALPN; a client that did not choose it could not speak it.
      secure.on('secureConnection', (socket: TLSSocket) => (socket.alpnProtocol === 'h2' ? this.accept(socket) : socket.destroy()));
      secure.on('tlsClientError', () => {}); // a failed handshake concerns that client alone
      server = secure;
    } else {
      server = createServer((socket) => this.accept(socket));
    }
    await this.listen(server, (done) => server.listen(port, host, done), `${host.includes(':') ? `[${host}]` : host}:${port}`);
    return (server.address() as { port: number }).port;
  }

  /** Listens on a Unix socket, plaintext whatever api.tls says (the socket file's permissions guard it); replaces a stale socket. */
  async listenSocket(path: string): Promise<void> {
    await removeStaleSocket(path);
    const server = createServer((socket) => this.accept(socket));
    await this.listen(server, (done) => server.listen(path, done), `unix:${path}`);
  }

  private listen(server: Listener, start: (done: () => void) => void, where: string): Promise<void> {
    this.listeners.push(server);
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`gRPC API could not listen on ${where}: ${err.message}`)));
      start(() => resolve());
    });
  }

  private accept(socket: Socket): void {
    if (this.closing) return void socket.destroy();
    const connection = new H2Connection(socket, this.limits, (stream, headers, listBytes) =>
      serveCall(stream, headers, this.call, { bytes: listBytes, limit: this.limits.maxHeaderListSize }),
    );
    this.connections.add(connection);
    connection.onClose(() => this.connections.delete(connection));
  }

  /**
   * Stops listening and asks every connection to finish (GOAWAY: calls in
   * progress complete, no new ones start); after `drainMs`, closes what is left.
   */
  async close(drainMs: number): Promise<void> {
    this.closing = true;
    for (const off of this.unsubscribe) off();
    const closed = this.listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const connection of this.connections) connection.shutdown();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs)));
    await Promise.race([Promise.all(closed), late]);
    clearTimeout(timer);
    for (const connection of this.connections) connection.destroy();
    await Promise.all(closed);
    this.listeners.length = 0;
  }
}

/**
 * A socket left by an agent that did not stop cleanly would make the bind fail; anything else
 * at that path is left alone, a socket something still listens on too (another agent's: taking
 * it over would cut that agent off).
 */
async function removeStaleSocket(path: string): Promise<void> {
  const stat = await lstat(path).catch(() => undefined);
  if (stat?.isSocket() && !(await listening(path))) await unlink(path);
}

function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}
