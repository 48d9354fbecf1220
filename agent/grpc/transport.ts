/**
 * gRPC's transport on node:http2: the listeners (TCP, with TLS when `api.tls`
 * is set, and the Unix socket) and their connections; call.ts handles each
 * call. The agent's own rather than @grpc/grpc-js's server: grpc-js runs every
 * call through a chain of interceptor objects, stream wrappers and metadata
 * copies that cost more server CPU than the model work of a small model
 * (docs/http-api.md#grpc has the numbers).
 */
import { lstat, unlink } from 'node:fs/promises';
import { createSecureServer, createServer, type Http2SecureServer, type Http2Server, type ServerHttp2Session } from 'node:http2';
import type { Socket } from 'node:net';
import type { TlsMaterial } from '../access/tls-material.js';
import { serveCall, type CallOptions } from './call.js';

/**
 * Flow-control windows. HTTP/2's default (64 KiB per stream and per connection)
 * makes a client wait a round trip per 64 KiB of a large request tensor; these
 * let a few megabytes be in flight, as gRPC's C core allows its peers.
 */
const STREAM_WINDOW = 4 * 1024 * 1024;
const CONNECTION_WINDOW = 16 * 1024 * 1024;

type Listener = Http2Server | Http2SecureServer;

export class GrpcTransport {
  private readonly listeners: Listener[] = [];
  private readonly sessions = new Set<ServerHttp2Session>();
  private readonly unsubscribe: (() => void)[] = [];

  constructor(private readonly call: CallOptions) {}

  /** Listens on host:port, with TLS when `tls` is given (a reloaded certificate serves new connections); the port bound. */
  async listenTcp(host: string, port: number, tls: TlsMaterial | undefined): Promise<number> {
    const settings = { settings: { initialWindowSize: STREAM_WINDOW } };
    const server = tls ? createSecureServer({ ...settings, ...tls.material }) : createServer(settings);
    if (tls) this.unsubscribe.push(tls.subscribe((material) => (server as Http2SecureServer).setSecureContext(material)));
    // A reply's headers, message and trailers may go out as separate writes; Nagle would hold a small one back.
    server.on(tls ? 'secureConnection' : 'connection', (socket: Socket) => socket.setNoDelay(true));
    await this.listen(server, (done) => server.listen(port, host, done), `${host.includes(':') ? `[${host}]` : host}:${port}`);
    return (server.address() as { port: number }).port;
  }

  /** Listens on a Unix socket, plaintext whatever api.tls says (the socket file's permissions guard it); replaces a stale socket. */
  async listenSocket(path: string): Promise<void> {
    await removeStaleSocket(path);
    const server = createServer({ settings: { initialWindowSize: STREAM_WINDOW } });
    await this.listen(server, (done) => server.listen(path, done), `unix:${path}`);
  }

  private listen(server: Listener, start: (done: () => void) => void, where: string): Promise<void> {
    server.on('session', (session: ServerHttp2Session) => this.opened(session));
    server.on('stream', (stream, headers) => serveCall(stream, headers, this.call));
    this.listeners.push(server);
    return new Promise((resolve, reject) => {
      server.once('error', (err) => reject(new Error(`gRPC API could not listen on ${where}: ${err.message}`)));
      start(() => resolve());
    });
  }

  private opened(session: ServerHttp2Session): void {
    this.sessions.add(session);
    session.once('close', () => this.sessions.delete(session));
    // A connection that fails (a reset, a protocol error from the peer) just closes.
    session.on('error', () => {});
    session.once('localSettings', () => {
      if (!session.destroyed) session.setLocalWindowSize(CONNECTION_WINDOW);
    });
  }

  /**
   * Stops listening and asks every connection to finish (GOAWAY: calls in
   * progress complete, no new ones start); after `drainMs`, closes what is left.
   */
  async close(drainMs: number): Promise<void> {
    for (const off of this.unsubscribe) off();
    const closed = this.listeners.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const session of this.sessions) session.close();
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs)));
    await Promise.race([Promise.all(closed), late]);
    clearTimeout(timer);
    for (const session of this.sessions) session.destroy();
    await Promise.all(closed);
    this.listeners.length = 0;
  }
}

/** A socket left by an agent that did not stop cleanly would make the bind fail; anything else at that path is left alone. */
async function removeStaleSocket(path: string): Promise<void> {
  const stat = await lstat(path).catch(() => undefined);
  if (stat?.isSocket()) await unlink(path);
}
