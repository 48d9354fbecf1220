/**
 * A raw HTTP/2 client for protocol tests: frames written byte by byte on a
 * plain socket (TCP, TLS or Unix), every frame the server sends kept in order,
 * header blocks decoded with the agent's HPACK decoder. It sends exactly what
 * a test tells it to, however wrong, and never answers on its own.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { Flag, frame, Frame, PREFACE, readFrames, settingsFrame } from '../../agent/grpc/h2-frames.js';
import { HpackDecoder, HpackEncoder } from '../../agent/grpc/hpack.js';

export interface RawFrame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
  /** HEADERS: the decoded header block (joined with its CONTINUATIONs), as [name, value] pairs. */
  fields?: [string, string][];
}

export interface GoAwayInfo {
  lastStream: number;
  code: number;
  debug: string;
}

const WAIT_MS = 3000;
const encoder = new HpackEncoder();

/** A header block, encoded as the server's own encoder would (static table and literals, names as given). */
export const headerBlock = (fields: readonly (readonly [string, string])[]): Buffer => encoder.encode(fields);

/** The header fields of a well-formed gRPC request for `path`. */
export const requestFields = (path: string): [string, string][] => [
  [':method', 'POST'],
  [':scheme', 'http'],
  [':path', path],
  [':authority', 'localhost'],
  ['content-type', 'application/grpc'],
  ['te', 'trailers'],
];

/** A gRPC message: the 5-byte prefix (uncompressed, big-endian length) and the bytes. */
export function grpcMessage(bytes: Uint8Array): Buffer {
  const out = Buffer.alloc(5 + bytes.length);
  out.writeUInt32BE(bytes.length, 1);
  out.set(bytes, 5);
  return out;
}

export const u32 = (value: number): Buffer => {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value, 0);
  return out;
};

export class RawH2Client {
  /** Every frame the server sent, in order. */
  readonly frames: RawFrame[] = [];
  /** Resolves when the socket closes. */
  readonly closed: Promise<void>;
  /** Bytes received that are not HTTP/2 frames: set when the server sent something else. */
  private rest = Buffer.alloc(0);
  private readonly decoder = new HpackDecoder();
  private block: { frame: RawFrame; parts: Buffer[] } | undefined;
  private readonly taken = new Set<RawFrame>();
  private wake: (() => void)[] = [];
  private isClosed = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.read(chunk));
    socket.on('error', () => {}); // a reset from the server: 'close' follows, and the test asserts what came before it
    this.closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.isClosed = true;
        this.notify();
        resolve();
      });
    });
  }

  static async tcp(port: number): Promise<RawH2Client> {
    const socket = netConnect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawH2Client(socket);
  }

  static async unix(path: string): Promise<RawH2Client> {
    const socket = netConnect({ path });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new RawH2Client(socket);
  }

  /** A TLS client; resolves once the handshake is done (or the server ended it: then `closed` resolves too). */
  static async tls(options: ConnectionOptions): Promise<RawH2Client> {
    const socket = tlsConnect(options);
    const client = new RawH2Client(socket);
    await Promise.race([new Promise<void>((resolve) => socket.once('secureConnect', resolve)), client.closed]);
    return client;
  }

  /** A connection that has sent the preface and its SETTINGS (`settings` as [id, value] pairs). */
  static async started(port: number, settings: readonly (readonly [number, number])[] = []): Promise<RawH2Client> {
    const client = await RawH2Client.tcp(port);
    client.start(settings);
    return client;
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  send(...bytes: Buffer[]): void {
    this.socket.write(Buffer.concat(bytes));
  }

  /** The preface and a SETTINGS frame. */
  start(settings: readonly (readonly [number, number])[] = []): void {
    this.send(PREFACE, settingsFrame(settings));
  }

  /** HEADERS with END_HEADERS on `stream`, END_STREAM when `end`. */
  headers(stream: number, fields: readonly (readonly [string, string])[], end = false): void {
    this.send(frame(Frame.HEADERS, Flag.END_HEADERS | (end ? Flag.END_STREAM : 0), stream, headerBlock(fields)));
  }

  data(stream: number, bytes: Buffer, end = true): void {
    this.send(frame(Frame.DATA, end ? Flag.END_STREAM : 0, stream, bytes));
  }

  /** A whole unary request: HEADERS, then one DATA with the message and END_STREAM. */
  call(stream: number, path: string, message: Uint8Array): void {
    this.send(frame(Frame.HEADERS, Flag.END_HEADERS, stream, headerBlock(requestFields(path))), frame(Frame.DATA, Flag.END_STREAM, stream, grpcMessage(message)));
  }

  /** The first frame not yet taken that matches; waits for it up to `ms`. */
  async next(match: (f: RawFrame) => boolean, what: string, ms = WAIT_MS): Promise<RawFrame> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.frames.find((f) => !this.taken.has(f) && match(f));
      if (found) {
        this.taken.add(found);
        return found;
      }
      if (this.isClosed) throw new Error(`connection closed before ${what}; frames: ${this.describe()}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${ms} ms; frames: ${this.describe()}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  frameOf(type: number, stream: number, ms?: number): Promise<RawFrame> {
    return this.next((f) => f.type === type && f.stream === stream, `frame type ${type} on stream ${stream}`, ms);
  }

  async goAway(ms?: number): Promise<GoAwayInfo> {
    const f = await this.frameOf(Frame.GOAWAY, 0, ms);
    return { lastStream: f.payload.readUInt32BE(0) & 0x7fffffff, code: f.payload.readUInt32BE(4), debug: f.payload.subarray(8).toString('utf8') };
  }

  /** The error code of the RST_STREAM on `stream`. */
  async rstCode(stream: number, ms?: number): Promise<number> {
    return (await this.frameOf(Frame.RST_STREAM, stream, ms)).payload.readUInt32BE(0);
  }

  /** Waits for the socket to close; throws if it stays open `ms`. */
  async waitClosed(ms = WAIT_MS): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`connection still open after ${ms} ms`)), ms)));
    try {
      await Promise.race([this.closed, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A PING answered: the server has read everything sent before it. */
  async roundTrip(): Promise<void> {
    const opaque = Buffer.from(Math.random().toString(16).slice(2, 10).padEnd(8, '0'), 'latin1');
    this.send(frame(Frame.PING, 0, 0, opaque));
    await this.next((f) => f.type === Frame.PING && (f.flags & Flag.ACK) !== 0 && f.payload.equals(opaque), 'PING ACK');
  }

  /** Every frame received so far that matches and is not yet taken, taken now. */
  takeAll(match: (f: RawFrame) => boolean): RawFrame[] {
    const found = this.frames.filter((f) => !this.taken.has(f) && match(f));
    for (const f of found) this.taken.add(f);
    return found;
  }

  /** Frames received on `stream` of `type`, taken or not. */
  all(type: number, stream: number): RawFrame[] {
    return this.frames.filter((f) => f.type === type && f.stream === stream);
  }

  close(): void {
    this.socket.destroy();
  }

  private describe(): string {
    // type/flags/stream/length of the last 40, enough to see what went wrong.
    const last = this.frames.slice(-40).map((f) => `${f.type}/${f.flags}/${f.stream}/${f.payload.length}`);
    return `${this.frames.length} in all${this.frames.length > 40 ? ', the last 40' : ''}: ${last.join(' ') || 'none'}`;
  }

  private read(chunk: Buffer): void {
    const buf = this.rest.length > 0 ? Buffer.concat([this.rest, chunk]) : chunk;
    // Any size the 24-bit length can declare: the test asserts what the server sent, however wrong.
    const at = readFrames(buf, 0xffffff, (type, flags, stream, payload) => {
      const f: RawFrame = { type, flags, stream, payload: Buffer.from(payload) };
      this.headerBlock(f);
      this.frames.push(f);
    });
    this.rest = Buffer.from(buf.subarray(at));
    this.notify();
  }

  /** Decodes header blocks in the order they arrive, as HPACK requires. */
  private headerBlock(f: RawFrame): void {
    if (f.type === Frame.HEADERS) this.block = { frame: f, parts: [f.payload] };
    else if (f.type === Frame.CONTINUATION && this.block) this.block.parts.push(f.payload);
    else return;
    if (!(f.flags & Flag.END_HEADERS)) return;
    const flat = this.decoder.decode(Buffer.concat(this.block.parts));
    const fields: [string, string][] = [];
    for (let i = 0; i < flat.length; i += 2) fields.push([flat[i]!, flat[i + 1]!]);
    this.block.frame.fields = fields;
    this.block = undefined;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = [];
    for (const w of wake) w();
  }
}
