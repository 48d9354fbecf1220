/**
 * The gRPC transport's HTTP/2 layer (agent/grpc/h2-connection.ts, h2-stream.ts,
 * transport.ts) with raw frames on a raw socket: a real GrpcTransport on
 * 127.0.0.1 with a few test routes, and a client (helpers/h2-raw.ts) that
 * sends exactly the bytes each test names, however wrong. Every bad input gets
 * the RST_STREAM or GOAWAY error code RFC 9113 gives it, and the connection
 * stays usable wherever the error is the stream's alone. The gRPC level with
 * real clients is in grpc-transport.test.ts and grpc-api.test.ts.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { link, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TlsMaterial } from '../agent/access/tls-material.js';
import type { CallOptions, Route } from '../agent/grpc/call.js';
import type { H2Limits } from '../agent/grpc/h2-connection.js';
import { Flag, frame, Frame, goAway, H2Error, headerFrames, PREFACE, rstStream, Setting, settingsFrame, windowUpdate } from '../agent/grpc/h2-frames.js';
import { GrpcTransport } from '../agent/grpc/transport.js';
import { grpcMessage, headerBlock, RawH2Client, requestFields, u32, type RawFrame } from './helpers/h2-raw.js';

const ECHO = '/test.Echo/Unary';
const BIG = '/test.Echo/Big';
const DIGEST = '/test.Echo/Digest';
/** A server-streaming call that answers its request once and stays open until the client ends it. */
const HOLD = '/test.Echo/Hold';
/** How many Hold calls have closed, by the client or with their connection. */
let holdsClosed = 0;
/** The Big route's answer: 200 KB, no two neighbouring 64 KiB windows alike. */
const BIG_ANSWER = Buffer.from(Array.from({ length: 200 * 1024 }, (_, i) => (i * 131 + (i >> 9)) & 0xff));

/** A handler that throws instead of replying: a fault of the agent's own. */
const THROW = '/test.Echo/Throw';
/** What the transport reported through onFault. */
const faults: unknown[] = [];

const bytesRoute = (handle: (request: Buffer) => Uint8Array): Route => ({
  kind: 'unary',
  decode: (b) => b,
  encode: (m) => m as Uint8Array,
  requestType: 'Echo',
  handle: (request, reply) => reply(null, handle(request as Buffer)),
});

const callOptions: CallOptions = {
  routes: new Map<string, Route>([
    [ECHO, bytesRoute((request) => request)],
    [BIG, bytesRoute(() => BIG_ANSWER)],
    [DIGEST, bytesRoute((request) => createHash('sha256').update(request).digest())],
    [
      THROW,
      bytesRoute(() => {
        throw new Error('handler bug');
      }),
    ],
    [
      HOLD,
      {
        kind: 'stream',
        decode: (b) => b,
        encode: (m) => m as Uint8Array,
        requestType: 'Echo',
        handle: (request, out) => {
          out.onClose(() => holdsClosed++);
          out.write(request);
        },
      },
    ],
  ]),
  maxMessageBytes: 8 * 1024 * 1024,
  access: undefined,
  onFault: (err) => faults.push(err),
};

const transports: GrpcTransport[] = [];
const clients: RawH2Client[] = [];

/** A transport on 127.0.0.1, port 0, with some of its HTTP/2 limits replaced; the port. */
async function serve(limits: Partial<H2Limits> = {}): Promise<{ transport: GrpcTransport; port: number }> {
  const transport = new GrpcTransport(callOptions, limits);
  transports.push(transport);
  return { transport, port: await transport.listenTcp('127.0.0.1', 0, undefined) };
}

async function client(port: number, settings: readonly (readonly [number, number])[] = []): Promise<RawH2Client> {
  const c = await RawH2Client.started(port, settings);
  clients.push(c);
  return c;
}

const fieldsOf = (f: RawFrame): Record<string, string> => Object.fromEntries(f.fields ?? []);

/** The answer on `stream`: response headers, the DATA bytes, the trailers; checks the frames' order and flags. */
async function answer(c: RawH2Client, stream: number): Promise<{ head: Record<string, string>; body: Buffer; trailers: Record<string, string> }> {
  const head = await c.frameOf(Frame.HEADERS, stream);
  const trailers = await c.frameOf(Frame.HEADERS, stream);
  expect(head.flags).toBe(Flag.END_HEADERS);
  expect(trailers.flags).toBe(Flag.END_HEADERS | Flag.END_STREAM);
  const data = c.all(Frame.DATA, stream);
  // Nothing of the stream after its trailers, and every DATA frame between the two header blocks.
  const at = (f: RawFrame): number => c.frames.indexOf(f);
  for (const f of data) {
    expect(at(f)).toBeGreaterThan(at(head));
    expect(at(f)).toBeLessThan(at(trailers));
    expect(f.flags).toBe(0);
  }
  return { head: fieldsOf(head), body: Buffer.concat(data.map((f) => f.payload)), trailers: fieldsOf(trailers) };
}

/** Asserts a well-formed echo of `message` on `stream`. */
async function expectEcho(c: RawH2Client, stream: number, message: Buffer): Promise<void> {
  const { head, body, trailers } = await answer(c, stream);
  expect(head[':status']).toBe('200');
  expect(body.equals(grpcMessage(message))).toBe(true);
  expect(trailers['grpc-status']).toBe('0');
}

/** The connection failed: GOAWAY with `code` (and `lastStream`), then the socket closed. */
async function expectGoAway(c: RawH2Client, code: number, lastStream: number, debug?: RegExp): Promise<void> {
  const goaway = await c.goAway();
  expect({ code: goaway.code, lastStream: goaway.lastStream }).toEqual({ code, lastStream });
  if (debug) expect(goaway.debug).toMatch(debug);
  await c.waitClosed();
}

const dataBytes = (c: RawH2Client, stream: number): number => c.all(Frame.DATA, stream).reduce((n, f) => n + f.payload.length, 0);
const rawHeaders = (stream: number, flags: number, payload: Buffer): Buffer => frame(Frame.HEADERS, flags, stream, payload);

let port: number;

beforeAll(async () => {
  ({ port } = await serve());
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(async () => {
  await Promise.all(transports.map((t) => t.close(0)));
});

describe('HTTP/2 connection: a handler that throws', () => {
  it('ends that call INTERNAL, reports the fault, and the connection goes on', async () => {
    const c = await client(port);
    c.call(1, THROW, Buffer.from('x'));
    const failed = fieldsOf(await c.frameOf(Frame.HEADERS, 1));
    expect([failed['grpc-status'], decodeURIComponent(failed['grpc-message'] ?? '')]).toEqual(['13', 'internal error; see the agent log']);
    expect(faults.map((e) => (e as Error).message)).toContain('handler bug');
    c.call(3, ECHO, Buffer.from('after'));
    await expectEcho(c, 3, Buffer.from('after'));
  });
});

describe('HTTP/2 connection: the happy path', () => {
  it('answers a unary call: response headers, one DATA with the prefixed echo, trailers with END_STREAM and grpc-status 0', async () => {
    const c = await client(port);
    const message = Buffer.from('hello, raw frames');
    c.call(1, ECHO, message);
    const head = await c.frameOf(Frame.HEADERS, 1);
    const data = await c.frameOf(Frame.DATA, 1);
    const trailers = await c.frameOf(Frame.HEADERS, 1);
    expect(head.flags).toBe(Flag.END_HEADERS);
    expect(fieldsOf(head)).toMatchObject({ ':status': '200', 'content-type': 'application/grpc' });
    expect(head.fields?.[0]).toEqual([':status', '200']);
    expect(data.flags).toBe(0);
    expect(data.payload).toEqual(grpcMessage(message));
    expect(trailers.flags).toBe(Flag.END_HEADERS | Flag.END_STREAM);
    expect(trailers.fields).toEqual([['grpc-status', '0']]);
    expect(c.all(Frame.DATA, 1)).toHaveLength(1);
    expect(c.frames.filter((f) => f.type === Frame.RST_STREAM || f.type === Frame.GOAWAY)).toEqual([]);
  });

  it('opens with SETTINGS (no push, its limits) and its connection window, ACKs our SETTINGS, and answers PING with the same 8 bytes', async () => {
    const c = await client(port, [[Setting.HEADER_TABLE_SIZE, 0]]);
    const settings = await c.next(() => true, 'first frame');
    expect(settings.type).toBe(Frame.SETTINGS);
    expect(settings.flags).toBe(0);
    expect(settings.payload).toEqual(
      settingsFrame([
        [Setting.ENABLE_PUSH, 0],
        [Setting.MAX_CONCURRENT_STREAMS, 1000],
        [Setting.INITIAL_WINDOW_SIZE, 4 * 1024 * 1024],
        [Setting.MAX_HEADER_LIST_SIZE, 16 * 1024],
      ]).subarray(9),
    );
    const window = await c.next(() => true, 'second frame');
    expect([window.type, window.stream, window.payload.readUInt32BE(0)]).toEqual([Frame.WINDOW_UPDATE, 0, 16 * 1024 * 1024 - 65_535]);
    const ack = await c.next((f) => f.type === Frame.SETTINGS, 'SETTINGS ACK');
    expect([ack.flags, ack.stream, ack.payload.length]).toEqual([Flag.ACK, 0, 0]);
    const opaque = Buffer.from([1, 2, 3, 4, 0xfd, 0xfe, 0xff, 0]);
    c.send(frame(Frame.PING, 0, 0, opaque));
    const pong = await c.frameOf(Frame.PING, 0);
    expect(pong.flags).toBe(Flag.ACK);
    expect(pong.payload).toEqual(opaque);
    // A PING ACK from the client is not answered.
    c.send(frame(Frame.PING, Flag.ACK, 0, opaque));
    await c.roundTrip();
    expect(c.all(Frame.PING, 0).filter((f) => f.payload.equals(opaque))).toHaveLength(1);
  });
});

describe('HTTP/2 connection: the preface and frame sizes', () => {
  it('answers a connection that is not HTTP/2 with GOAWAY PROTOCOL_ERROR and closes it', async () => {
    const c = await RawH2Client.tcp(port);
    clients.push(c);
    c.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    const goaway = await c.goAway();
    expect(goaway).toEqual({ lastStream: 0, code: H2Error.PROTOCOL_ERROR, debug: 'not an HTTP/2 connection preface: gRPC needs HTTP/2' });
    await c.waitClosed();
  });

  it('answers a first frame other than SETTINGS, or a SETTINGS ACK first, with GOAWAY PROTOCOL_ERROR', async () => {
    for (const first of [frame(Frame.PING, 0, 0, Buffer.alloc(8)), frame(Frame.SETTINGS, Flag.ACK, 0)]) {
      const c = await RawH2Client.tcp(port);
      clients.push(c);
      c.send(PREFACE, first);
      await expectGoAway(c, H2Error.PROTOCOL_ERROR, 0, /first frame after the preface must be SETTINGS/);
    }
  });

  it('takes a preface split across writes a byte at a time', async () => {
    const c = await RawH2Client.tcp(port);
    clients.push(c);
    for (const byte of PREFACE) {
      c.send(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    c.send(settingsFrame([]));
    await c.roundTrip();
    c.call(1, ECHO, Buffer.from('split'));
    await expectEcho(c, 1, Buffer.from('split'));
  });

  it('answers a frame over 16384 bytes, a 7-byte PING and a SETTINGS not a multiple of 6 long with GOAWAY FRAME_SIZE_ERROR', async () => {
    const big = await client(port);
    // The header alone is enough: the length is checked before the payload is waited for.
    big.send(Buffer.from([0x00, 0x40, 0x01, Frame.DATA, 0, 0, 0, 0, 1]));
    await expectGoAway(big, H2Error.FRAME_SIZE_ERROR, 0, /16385 bytes/);

    const ping = await client(port);
    ping.send(frame(Frame.PING, 0, 0, Buffer.alloc(7)));
    await expectGoAway(ping, H2Error.FRAME_SIZE_ERROR, 0, /PING of 7 bytes/);

    const settings = await client(port);
    settings.send(frame(Frame.SETTINGS, 0, 0, Buffer.alloc(7)));
    await expectGoAway(settings, H2Error.FRAME_SIZE_ERROR, 0, /SETTINGS of 7 bytes/);
  });

  it('takes a frame of exactly 16384 bytes', async () => {
    const c = await client(port);
    const message = Buffer.alloc(16384 - 5, 7);
    c.send(frame(Frame.HEADERS, Flag.END_HEADERS, 1, headerBlock(requestFields(ECHO))), frame(Frame.DATA, Flag.END_STREAM, 1, grpcMessage(message)));
    await expectEcho(c, 1, message);
  });
});

describe('HTTP/2 connection: header blocks', () => {
  it('cuts a CONTINUATION flood past 64 KiB with GOAWAY ENHANCE_YOUR_CALM', async () => {
    const c = await client(port);
    c.send(rawHeaders(1, 0, headerBlock(requestFields(ECHO))));
    for (let i = 0; i < 4; i++) c.send(frame(Frame.CONTINUATION, 0, 1, Buffer.alloc(16384, 0x40)));
    await expectGoAway(c, H2Error.ENHANCE_YOUR_CALM, 0, /header block over 65536 bytes/);
  });

  it('cuts a flood of empty CONTINUATION frames, which never grow the block, with GOAWAY ENHANCE_YOUR_CALM', async () => {
    const c = await client(port);
    c.send(rawHeaders(1, 0, headerBlock(requestFields(ECHO))));
    // 100000 frames of 9 bytes each: every one kept would be state without bound for 900 KB on the wire.
    c.send(Buffer.concat(Array.from({ length: 100_000 }, () => frame(Frame.CONTINUATION, 0, 1))));
    await expectGoAway(c, H2Error.ENHANCE_YOUR_CALM, 0, /header block in more than 8 CONTINUATION frames/);
  });

  it('refuses a stream whose header list is over MAX_HEADER_LIST_SIZE with RESOURCE_EXHAUSTED; the connection goes on', async () => {
    const c = await client(port);
    // HEADERS and a CONTINUATION, 16384 bytes each at most: the frames are fine, the list is not.
    c.send(headerFrames(1, headerBlock([...requestFields(ECHO), ['authorization', 'x'.repeat(16 * 1024)]]), true, 16384));
    const refused = fieldsOf(await c.frameOf(Frame.HEADERS, 1));
    expect(refused['grpc-status']).toBe('8');
    expect(decodeURIComponent(refused['grpc-message'] ?? '')).toMatch(/^request metadata of \d+ bytes is over the limit of 16384 \(header fields/);
    c.call(3, ECHO, Buffer.from('after'));
    await expectEcho(c, 3, Buffer.from('after'));
  });

  it('answers a header list over four times MAX_HEADER_LIST_SIZE with GOAWAY COMPRESSION_ERROR (a decompression bomb: not decoded further)', async () => {
    const c = await client(port);
    // One 4000-byte field (literal with incremental indexing, value length 4000 as a 7-bit-prefix integer) into HPACK's dynamic table, then indexed 17 times: a block of about 4 KB that decodes to 68 KB.
    const literal = Buffer.concat([Buffer.from([0x40, 5]), Buffer.from('x-big'), Buffer.from([0x7f, 0x80 | ((4000 - 127) % 128), (4000 - 127) >> 7]), Buffer.from('y'.repeat(4000))]);
    const indexed = Buffer.alloc(17, 0x80 | 62);
    c.send(headerFrames(1, Buffer.concat([headerBlock(requestFields(ECHO)), literal, indexed]), true, 16384));
    await expectGoAway(c, H2Error.COMPRESSION_ERROR, 0, /header list exceeds 65536 bytes/);
  });

  it('takes a header block in HEADERS and CONTINUATION frames', async () => {
    const c = await client(port);
    const block = headerBlock(requestFields(ECHO));
    c.send(rawHeaders(1, 0, block.subarray(0, 3)), frame(Frame.CONTINUATION, 0, 1, block.subarray(3, 10)), frame(Frame.CONTINUATION, Flag.END_HEADERS, 1, block.subarray(10)));
    c.data(1, grpcMessage(Buffer.from('continued')));
    await expectEcho(c, 1, Buffer.from('continued'));
    // Eight CONTINUATIONs, nghttp2's limit, are still fine.
    const parts = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((i) => block.subarray(i * 4, i === 8 ? block.length : i * 4 + 4));
    c.send(rawHeaders(3, 0, parts[0]!), ...parts.slice(1).map((part, i) => frame(Frame.CONTINUATION, i === 7 ? Flag.END_HEADERS : 0, 3, part)));
    c.data(3, grpcMessage(Buffer.from('eight')));
    await expectEcho(c, 3, Buffer.from('eight'));
  });

  it('answers another frame in the middle of a header block, and a CONTINUATION with no block, with GOAWAY PROTOCOL_ERROR', async () => {
    const middle = await client(port);
    middle.send(rawHeaders(1, 0, headerBlock(requestFields(ECHO))), frame(Frame.PING, 0, 0, Buffer.alloc(8)));
    await expectGoAway(middle, H2Error.PROTOCOL_ERROR, 0, /in the middle of a header block/);

    const lone = await client(port);
    lone.send(frame(Frame.CONTINUATION, Flag.END_HEADERS, 1, headerBlock(requestFields(ECHO))));
    await expectGoAway(lone, H2Error.PROTOCOL_ERROR, 0, /CONTINUATION on stream 1 without a header block/);

    // A CONTINUATION on another stream than its HEADERS' is no better.
    const other = await client(port);
    other.send(rawHeaders(1, 0, headerBlock(requestFields(ECHO))), frame(Frame.CONTINUATION, Flag.END_HEADERS, 3, Buffer.alloc(0)));
    await expectGoAway(other, H2Error.PROTOCOL_ERROR, 0, /CONTINUATION on stream 3/);
  });

  it('answers an HPACK index in neither table with GOAWAY COMPRESSION_ERROR', async () => {
    const c = await client(port);
    // Indexed field 200: 0xff then 200 - 127 = 73.
    c.send(rawHeaders(1, Flag.END_HEADERS | Flag.END_STREAM, Buffer.from([0xff, 73])));
    await expectGoAway(c, H2Error.COMPRESSION_ERROR, 0);
  });

  it('resets each stream whose request headers break HTTP/2 rules with PROTOCOL_ERROR, and the next stream still works', async () => {
    const c = await client(port);
    const good = requestFields(ECHO);
    const bad: [string, [string, string][]][] = [
      ['uppercase name', [...good, ['X-Token', 'a']]],
      ['connection-specific field', [...good, ['connection', 'keep-alive']]],
      ['te other than trailers', [...good.filter(([n]) => n !== 'te'), ['te', 'gzip']]],
      ['pseudo-header after a regular one', [...good.filter(([n]) => n !== ':authority'), [':authority', 'localhost']]],
      ['unknown pseudo-header', [[':protocol', 'x'], ...good]],
      ['repeated pseudo-header', [[':path', ECHO], ...good]],
      ['no :path', good.filter(([n]) => n !== ':path')],
      ['no :method', good.filter(([n]) => n !== ':method')],
      ['name with a space', [...good, ['x token', 'a']]],
      ['name with a colon inside', [...good, ['x:token', 'a']]],
      ['empty name', [...good, ['', 'a']]],
      ['value with CR LF', [...good, ['x-token', 'a\r\nx-admin: 1']]],
      ['value with NUL', [...good, ['x-token', 'a\0b']]],
      ['value with leading space', [...good, ['x-token', ' a']]],
      ['value with trailing tab', [...good, ['x-token', 'a\t']]],
      [':path with LF', [...good.filter(([n]) => n !== ':path'), [':path', `${ECHO}\n`]]],
    ];
    let stream = 1;
    for (const [what, fields] of bad) {
      c.headers(stream, fields, true);
      const first = await c.next((f) => f.stream === stream, `an answer on stream ${stream} (${what})`);
      const code = first.type === Frame.RST_STREAM ? first.payload.readUInt32BE(0) : undefined;
      expect({ what, type: first.type, code }).toEqual({ what, type: Frame.RST_STREAM, code: H2Error.PROTOCOL_ERROR });
      stream += 2;
    }
    // Values may hold inner spaces, tabs and latin1 octets.
    c.headers(stream, [...good, ['x-token', 'a b\tc\u00e9']]);
    c.data(stream, grpcMessage(Buffer.from('still here')));
    await expectEcho(c, stream, Buffer.from('still here'));
    expect(c.frames.filter((f) => f.type === Frame.GOAWAY)).toEqual([]);
  });

  it('takes trailers from the client that end its side, and resets a stream whose second header block does not end it', async () => {
    const c = await client(port);
    c.headers(1, requestFields(ECHO));
    c.data(1, grpcMessage(Buffer.from('with trailers')), false);
    c.headers(1, [['x-checksum', 'abc']], true);
    await expectEcho(c, 1, Buffer.from('with trailers'));
    c.headers(3, requestFields(ECHO));
    c.headers(3, [['x-checksum', 'abc']], false);
    expect(await c.rstCode(3)).toBe(H2Error.PROTOCOL_ERROR);
    c.call(5, ECHO, Buffer.from('next'));
    await expectEcho(c, 5, Buffer.from('next'));
  });

  it('answers DATA or HEADERS after the client\'s END_STREAM with RST_STREAM STREAM_CLOSED (RFC 9113 5.1, half-closed remote)', async () => {
    const c = await client(port);
    c.call(1, HOLD, Buffer.from('held'));
    expect((await c.frameOf(Frame.DATA, 1)).payload).toEqual(grpcMessage(Buffer.from('held')));
    c.data(1, grpcMessage(Buffer.from('more')));
    expect(await c.rstCode(1)).toBe(H2Error.STREAM_CLOSED);
    c.call(3, HOLD, Buffer.from('held'));
    await c.frameOf(Frame.DATA, 3);
    c.headers(3, [['x-late', 'trailer']], true);
    expect(await c.rstCode(3)).toBe(H2Error.STREAM_CLOSED);
    c.call(5, ECHO, Buffer.from('next'));
    await expectEcho(c, 5, Buffer.from('next'));
  });

  it('ends a call the client resets with RST_STREAM CANCEL: its handler hears of it, nothing more is sent on the stream', async () => {
    const c = await client(port);
    const before = holdsClosed;
    c.call(1, HOLD, Buffer.from('held'));
    await c.frameOf(Frame.DATA, 1);
    c.send(rstStream(1, H2Error.CANCEL));
    await c.roundTrip();
    expect(holdsClosed).toBe(before + 1);
    expect(c.frames.filter((f) => f.stream === 1).map((f) => f.type)).toEqual([Frame.HEADERS, Frame.DATA]);
    // Frames the client had in flight for the stream are dropped without an error.
    c.send(windowUpdate(1, 100), frame(Frame.DATA, 0, 1, Buffer.alloc(10)));
    c.call(3, ECHO, Buffer.from('next'));
    await expectEcho(c, 3, Buffer.from('next'));
    expect(c.frames.filter((f) => f.type === Frame.RST_STREAM || f.type === Frame.GOAWAY)).toEqual([]);
  });

  it('reads padded DATA and padded HEADERS with the PRIORITY flag', async () => {
    const c = await client(port);
    const block = headerBlock(requestFields(ECHO));
    const priority = Buffer.from([0x80, 0, 0, 0, 200]); // exclusive on stream 0, weight 201: ignored
    c.send(rawHeaders(1, Flag.END_HEADERS | Flag.PADDED | Flag.PRIORITY, Buffer.concat([Buffer.from([7]), priority, block, Buffer.alloc(7)])));
    const message = Buffer.from('padded both ways');
    c.send(frame(Frame.DATA, Flag.END_STREAM | Flag.PADDED, 1, Buffer.concat([Buffer.from([10]), grpcMessage(message), Buffer.alloc(10, 0xaa)])));
    await expectEcho(c, 1, message);
    // Padding alone, no data: an empty padded DATA ends the stream too.
    c.headers(3, requestFields(ECHO));
    c.send(frame(Frame.DATA, 0, 3, grpcMessage(message)), frame(Frame.DATA, Flag.END_STREAM | Flag.PADDED, 3, Buffer.from([3, 0, 0, 0])));
    await expectEcho(c, 3, message);
  });

  it('answers padding longer than the frame with GOAWAY PROTOCOL_ERROR', async () => {
    const data = await client(port);
    data.headers(1, requestFields(ECHO));
    // Pad Length 4 in a 4-byte payload: the padding is as long as the payload (RFC 9113 6.1), one byte more than fits.
    data.send(frame(Frame.DATA, Flag.PADDED, 1, Buffer.from([4, 1, 2, 3])));
    await expectGoAway(data, H2Error.PROTOCOL_ERROR, 1, /padding longer than the frame/);

    const headers = await client(port);
    headers.send(rawHeaders(1, Flag.END_HEADERS | Flag.PADDED | Flag.PRIORITY, Buffer.concat([Buffer.from([255]), Buffer.alloc(5), headerBlock(requestFields(ECHO))])));
    await expectGoAway(headers, H2Error.PROTOCOL_ERROR, 0, /padding longer than the frame/);
  });
});

describe('HTTP/2 connection: stream ids and stream limits', () => {
  it('answers an even stream id with GOAWAY PROTOCOL_ERROR', async () => {
    const c = await client(port);
    c.headers(2, requestFields(ECHO), true);
    await expectGoAway(c, H2Error.PROTOCOL_ERROR, 0, /stream 2 is even/);
  });

  it('answers HEADERS on a stream id lower than one already used with GOAWAY STREAM_CLOSED', async () => {
    const c = await client(port);
    c.call(5, ECHO, Buffer.from('five'));
    await expectEcho(c, 5, Buffer.from('five'));
    c.headers(3, requestFields(ECHO), true);
    await expectGoAway(c, H2Error.STREAM_CLOSED, 5, /HEADERS on stream 3/);
  });

  it('refuses a stream over MAX_CONCURRENT_STREAMS with RST_STREAM REFUSED_STREAM, and serves again once one ends', async () => {
    const { port: small } = await serve({ maxConcurrentStreams: 3 });
    const c = await client(small);
    const settings = await c.frameOf(Frame.SETTINGS, 0);
    expect(settings.payload.subarray(6, 12)).toEqual(Buffer.from([0, Setting.MAX_CONCURRENT_STREAMS, 0, 0, 0, 3]));
    for (const stream of [1, 3, 5]) c.headers(stream, requestFields(ECHO));
    c.headers(7, requestFields(ECHO), true);
    expect(await c.rstCode(7)).toBe(H2Error.REFUSED_STREAM);
    // The three open streams are untouched: stream 1 finishes, and then a new stream fits.
    c.data(1, grpcMessage(Buffer.from('one')));
    await expectEcho(c, 1, Buffer.from('one'));
    c.call(9, ECHO, Buffer.from('nine'));
    await expectEcho(c, 9, Buffer.from('nine'));
    c.data(3, grpcMessage(Buffer.from('three')));
    await expectEcho(c, 3, Buffer.from('three'));
    expect(c.all(Frame.RST_STREAM, 5)).toEqual([]);
  });

  it('cuts a client that resets more than 1000 streams in a second (rapid reset) with GOAWAY ENHANCE_YOUR_CALM', async () => {
    const c = await client(port);
    const block = headerBlock(requestFields(ECHO));
    const burst = (from: number, count: number): Buffer => {
      const frames: Buffer[] = [];
      for (let i = 0; i < count; i++) frames.push(rawHeaders(from + 2 * i, Flag.END_HEADERS, block), rstStream(from + 2 * i, H2Error.CANCEL));
      return Buffer.concat(frames);
    };
    c.send(burst(1, 1000));
    await c.roundTrip();
    // 1000 resets are allowed; the server answered none of those streams.
    expect(c.frames.filter((f) => f.stream !== 0)).toEqual([]);
    c.send(burst(2001, 1));
    await expectGoAway(c, H2Error.ENHANCE_YOUR_CALM, 2001, /more than 1000 streams reset in a second/);
  });
});

describe('HTTP/2 connection: flow control of what the server sends', () => {
  it('sends no more DATA than the client\'s INITIAL_WINDOW_SIZE, the rest after a stream WINDOW_UPDATE, trailers last', async () => {
    const c = await client(port, [[Setting.INITIAL_WINDOW_SIZE, 100]]);
    const message = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
    c.call(1, ECHO, message);
    await c.frameOf(Frame.HEADERS, 1);
    await c.roundTrip();
    expect(dataBytes(c, 1)).toBe(100);
    expect(c.all(Frame.HEADERS, 1)).toHaveLength(1);
    c.send(windowUpdate(1, 1000));
    const trailers = await c.frameOf(Frame.HEADERS, 1);
    expect(trailers.fields).toEqual([['grpc-status', '0']]);
    expect(Buffer.concat(c.all(Frame.DATA, 1).map((f) => f.payload))).toEqual(grpcMessage(message));
    expect(c.frames.indexOf(trailers)).toBeGreaterThan(c.frames.indexOf(c.all(Frame.DATA, 1).at(-1)!));
  });

  it('stops at the 65535 bytes of the connection window whatever the stream window, and resumes on a connection WINDOW_UPDATE', async () => {
    const c = await client(port, [[Setting.INITIAL_WINDOW_SIZE, 1024 * 1024]]);
    c.call(1, BIG, Buffer.alloc(0));
    // The handler answers as the request ends: after the PING's answer, all the windows allow is out.
    await c.roundTrip();
    expect(dataBytes(c, 1)).toBe(65_535);
    expect(c.all(Frame.DATA, 1).every((f) => f.payload.length <= 16384)).toBe(true);
    // A stream WINDOW_UPDATE does not help while the connection's window is spent.
    c.send(windowUpdate(1, 1000));
    await c.roundTrip();
    expect(dataBytes(c, 1)).toBe(65_535);
    c.send(windowUpdate(0, 1024 * 1024));
    const { body, trailers } = await answer(c, 1);
    expect(body.equals(grpcMessage(BIG_ANSWER))).toBe(true);
    expect(trailers['grpc-status']).toBe('0');
  });

  it('shares the connection window between streams: both waiting answers complete, byte for byte, once it is opened', async () => {
    const c = await client(port, [[Setting.INITIAL_WINDOW_SIZE, 1024 * 1024]]);
    c.call(1, BIG, Buffer.alloc(0));
    c.call(3, BIG, Buffer.alloc(0));
    await c.roundTrip();
    expect(dataBytes(c, 1) + dataBytes(c, 3)).toBe(65_535);
    c.send(windowUpdate(0, 2 * (BIG_ANSWER.length + 5) - 65_535));
    for (const stream of [1, 3]) expect((await answer(c, stream)).body.equals(grpcMessage(BIG_ANSWER))).toBe(true);
  });

  it('resumes a stream that ran out of both windows at once, whichever WINDOW_UPDATE comes first', async () => {
    for (const first of [0, 1]) {
      // The default 65535 on both: the answer's first 65535 bytes use up the stream's and the connection's window together.
      const c = await client(port);
      c.call(1, BIG, Buffer.alloc(0));
      await c.roundTrip();
      expect(dataBytes(c, 1)).toBe(65_535);
      c.send(windowUpdate(first, 1024 * 1024));
      await c.roundTrip();
      expect(dataBytes(c, 1)).toBe(65_535);
      c.send(windowUpdate(1 - first, 1024 * 1024));
      expect((await answer(c, 1)).body.equals(grpcMessage(BIG_ANSWER))).toBe(true);
    }
  });

  it('adjusts open streams\' windows when SETTINGS changes INITIAL_WINDOW_SIZE mid-stream, below zero too (RFC 9113 6.9.2)', async () => {
    const c = await client(port, [[Setting.INITIAL_WINDOW_SIZE, 100]]);
    c.send(windowUpdate(0, 1024 * 1024));
    c.call(1, BIG, Buffer.alloc(0));
    await c.roundTrip();
    expect(dataBytes(c, 1)).toBe(100);
    c.send(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 1000]]));
    await c.roundTrip();
    expect(dataBytes(c, 1)).toBe(1000);
    // 1000 -> 500 takes the window to -500: a WINDOW_UPDATE of 600 leaves room for 100 bytes.
    c.send(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 500]]));
    c.send(windowUpdate(1, 600));
    await c.roundTrip();
    expect(dataBytes(c, 1)).toBe(1100);
    expect(c.all(Frame.SETTINGS, 0).filter((f) => f.flags === Flag.ACK)).toHaveLength(3);
    c.send(windowUpdate(1, 1024 * 1024));
    const { body } = await answer(c, 1);
    expect(body.equals(grpcMessage(BIG_ANSWER))).toBe(true);
  });

  it('answers a WINDOW_UPDATE of 0 with GOAWAY PROTOCOL_ERROR on the connection and RST_STREAM PROTOCOL_ERROR on a stream', async () => {
    const s = await client(port);
    s.headers(1, requestFields(ECHO));
    s.send(windowUpdate(1, 0));
    expect(await s.rstCode(1)).toBe(H2Error.PROTOCOL_ERROR);
    s.call(3, ECHO, Buffer.from('after'));
    await expectEcho(s, 3, Buffer.from('after'));

    const c = await client(port);
    c.send(windowUpdate(0, 0));
    await expectGoAway(c, H2Error.PROTOCOL_ERROR, 0, /WINDOW_UPDATE of 0 on the connection/);
  });

  it('answers a window taken past 2^31-1 with FLOW_CONTROL_ERROR: GOAWAY for the connection, RST_STREAM for a stream', async () => {
    const s = await client(port);
    s.headers(1, requestFields(ECHO));
    s.send(windowUpdate(1, 0x7fffffff));
    expect(await s.rstCode(1)).toBe(H2Error.FLOW_CONTROL_ERROR);
    s.call(3, ECHO, Buffer.from('after'));
    await expectEcho(s, 3, Buffer.from('after'));

    const c = await client(port);
    c.send(windowUpdate(0, 0x7fff0000), windowUpdate(0, 0x10000));
    await expectGoAway(c, H2Error.FLOW_CONTROL_ERROR, 0, /connection window over 2\^31-1/);

    const settings = await client(port);
    settings.send(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0x80000000]]));
    await expectGoAway(settings, H2Error.FLOW_CONTROL_ERROR, 0, /SETTINGS_INITIAL_WINDOW_SIZE/);
  });
});

describe('HTTP/2 connection: flow control of what the client sends', () => {
  it('resets a stream whose DATA goes past the stream window it advertised with RST_STREAM FLOW_CONTROL_ERROR', async () => {
    const { port: small } = await serve({ streamWindow: 1000 });
    const c = await client(small);
    const settings = await c.frameOf(Frame.SETTINGS, 0);
    expect(settings.payload.subarray(12, 18)).toEqual(Buffer.from([0, Setting.INITIAL_WINDOW_SIZE, 0, 0, 0x03, 0xe8]));
    c.headers(1, requestFields(ECHO));
    c.data(1, Buffer.alloc(1001), false);
    expect(await c.rstCode(1)).toBe(H2Error.FLOW_CONTROL_ERROR);
    // Exactly the window is fine, and the connection serves on.
    const message = Buffer.alloc(995, 1);
    c.call(3, ECHO, message);
    await expectEcho(c, 3, message);
  });

  it('gives connection window back for DATA on a stream it already reset, so the connection does not stall', async () => {
    const { port: small } = await serve({ connectionWindow: 65_535 });
    const c = await client(small);
    // A message over the limit: the call is refused and the stream reset while the client is still sending.
    c.headers(1, requestFields(ECHO));
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(9 * 1024 * 1024, 1);
    c.data(1, prefix, false);
    expect(await c.rstCode(1)).toBe(H2Error.NO_ERROR);
    expect(fieldsOf(await c.frameOf(Frame.HEADERS, 1))['grpc-status']).toBe('8');
    c.data(1, Buffer.alloc(16384), false);
    c.data(1, Buffer.alloc(16384), false);
    const update = await c.frameOf(Frame.WINDOW_UPDATE, 0);
    expect(update.payload.readUInt32BE(0)).toBe(5 + 2 * 16384);
    c.call(3, ECHO, Buffer.from('not stalled'));
    await expectEcho(c, 3, Buffer.from('not stalled'));
  });

  it('gives window back as it reads a 6 MB request, so a client that keeps to the windows never stalls', async () => {
    const c = await client(port);
    const request = grpcMessage(Buffer.from(Array.from({ length: 6 * 1024 * 1024 }, (_, i) => (i * 7 + (i >> 14)) & 0xff)));
    const settings = await c.frameOf(Frame.SETTINGS, 0);
    let streamWindow = settings.payload.readUInt32BE(14);
    let connectionWindow = 65_535;
    let streamUpdates = 0;
    const take = (frames: RawFrame[]): void => {
      for (const f of frames) {
        const increment = f.payload.readUInt32BE(0);
        if (f.stream === 0) connectionWindow += increment;
        else {
          streamWindow += increment;
          streamUpdates++;
        }
      }
    };
    const isUpdate = (f: RawFrame): boolean => f.type === Frame.WINDOW_UPDATE;
    c.headers(1, requestFields(DIGEST));
    for (let at = 0; at < request.length; ) {
      take(c.takeAll(isUpdate));
      const n = Math.min(16384, streamWindow, connectionWindow, request.length - at);
      if (n <= 0) {
        take([await c.next(isUpdate, 'WINDOW_UPDATE')]);
        continue;
      }
      c.data(1, request.subarray(at, at + n), at + n === request.length);
      at += n;
      streamWindow -= n;
      connectionWindow -= n;
    }
    const { body, trailers } = await answer(c, 1);
    expect(trailers['grpc-status']).toBe('0');
    expect(body.equals(grpcMessage(createHash('sha256').update(request.subarray(5)).digest()))).toBe(true);
    // 6 MiB through a 4 MiB stream window: the server gave window back on the way.
    expect(streamUpdates).toBeGreaterThanOrEqual(1);
  });
});

describe('HTTP/2 connection: GOAWAY both ways', () => {
  it('answers the stream in progress after the client\'s GOAWAY, then closes the connection', async () => {
    const c = await client(port);
    c.headers(1, requestFields(ECHO));
    await c.roundTrip();
    c.send(goAway(0, H2Error.NO_ERROR));
    await c.roundTrip();
    expect(c.isOpen).toBe(true);
    c.data(1, grpcMessage(Buffer.from('last words')));
    await expectEcho(c, 1, Buffer.from('last words'));
    await c.waitClosed();
  });

  it('drains on transport.close: GOAWAY NO_ERROR with the last stream, a later stream refused, the open call completed', async () => {
    const { transport, port: draining } = await serve();
    const c = await client(draining);
    c.headers(1, requestFields(ECHO));
    await c.roundTrip();
    const started = Date.now();
    const closed = transport.close(5000);
    expect(await c.goAway()).toEqual({ lastStream: 1, code: H2Error.NO_ERROR, debug: '' });
    c.call(3, ECHO, Buffer.from('too late'));
    expect(await c.rstCode(3)).toBe(H2Error.REFUSED_STREAM);
    c.data(1, grpcMessage(Buffer.from('in time')));
    await expectEcho(c, 1, Buffer.from('in time'));
    await c.waitClosed();
    await closed;
    // It ended with its last call, not at the end of the drain time.
    expect(Date.now() - started).toBeLessThan(4000);
    // The listener is gone.
    await expect(RawH2Client.tcp(draining)).rejects.toThrow(/ECONNREFUSED/);
  });
});

describe('HTTP/2 connection: drain time', () => {
  it('closes a connection whose call is still open when the drain time is over', async () => {
    const { transport, port: draining } = await serve();
    const c = await client(draining);
    c.headers(1, requestFields(ECHO));
    await c.roundTrip();
    const started = Date.now();
    await transport.close(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect((await c.goAway()).code).toBe(H2Error.NO_ERROR);
    await c.waitClosed();
    expect(c.all(Frame.HEADERS, 1)).toEqual([]);
  });
});

describe('HTTP/2 connection: the preface timeout', () => {
  it('closes a connection that sends nothing, or only the preface, with GOAWAY PROTOCOL_ERROR after prefaceTimeoutMs', async () => {
    const { port: quick } = await serve({ prefaceTimeoutMs: 200 });
    const silent = await RawH2Client.tcp(quick);
    const prefaceOnly = await RawH2Client.tcp(quick);
    clients.push(silent, prefaceOnly);
    prefaceOnly.send(PREFACE);
    const started = Date.now();
    for (const c of [silent, prefaceOnly]) await expectGoAway(c, H2Error.PROTOCOL_ERROR, 0, /no HTTP\/2 preface and SETTINGS within 200 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    // One that sent its SETTINGS in time is not cut.
    const c = await client(quick);
    await new Promise((resolve) => setTimeout(resolve, 300));
    c.call(1, ECHO, Buffer.from('in time'));
    await expectEcho(c, 1, Buffer.from('in time'));
  });
});

describe('HTTP/2 connection: TLS and Unix socket listeners', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-h2-'));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('serves a TLS client that offers ALPN h2, and closes one that offers only http/1.1 without a byte of HTTP/2', async () => {
    const cert = join(dir, 'cert.pem');
    const key = join(dir, 'key.pem');
    await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '2',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
    const material = new TlsMaterial({ cert, key });
    await material.load();
    const transport = new GrpcTransport(callOptions);
    transports.push(transport);
    const tlsPort = await transport.listenTcp('127.0.0.1', 0, material);
    const ca = await readFile(cert);

    const h2 = await RawH2Client.tls({ host: '127.0.0.1', port: tlsPort, servername: 'localhost', ca, ALPNProtocols: ['h2'] });
    clients.push(h2);
    expect((h2.socket as TLSSocket).alpnProtocol).toBe('h2');
    h2.start();
    h2.call(1, ECHO, Buffer.from('over TLS'));
    await expectEcho(h2, 1, Buffer.from('over TLS'));

    const http1 = await RawH2Client.tls({ host: '127.0.0.1', port: tlsPort, servername: 'localhost', ca, ALPNProtocols: ['http/1.1'] });
    clients.push(http1);
    http1.start();
    await http1.waitClosed();
    expect(http1.frames).toEqual([]);
  });

  it('serves on a Unix socket, replacing a stale socket file; a socket still listened on and any other file are left alone', async () => {
    const path = join(dir, 'grpc.sock');
    // A stale socket: the inode of one that was listening, left behind (a hard link survives the server's own unlink).
    const old = createServer();
    const oldPath = join(dir, 'old.sock');
    await new Promise<void>((resolve) => old.listen(oldPath, resolve));
    await link(oldPath, path);
    await new Promise<void>((resolve) => old.close(() => resolve()));
    expect((await stat(path)).isSocket()).toBe(true);

    const transport = new GrpcTransport(callOptions);
    transports.push(transport);
    await transport.listenSocket(path);
    const c = await RawH2Client.unix(path);
    clients.push(c);
    c.start();
    c.call(1, ECHO, Buffer.from('over unix'));
    await expectEcho(c, 1, Buffer.from('over unix'));

    // A socket something still listens on is not stale: a second transport must not take it over.
    const second = new GrpcTransport(callOptions);
    await expect(second.listenSocket(path)).rejects.toThrow(/gRPC API could not listen on unix:.*EADDRINUSE/);
    await second.close(0);
    const again = await RawH2Client.unix(path);
    clients.push(again);
    again.start();
    again.call(1, ECHO, Buffer.from('still the first'));
    await expectEcho(again, 1, Buffer.from('still the first'));

    const file = join(dir, 'not-a-socket');
    await writeFile(file, 'keep me');
    const third = new GrpcTransport(callOptions);
    await expect(third.listenSocket(file)).rejects.toThrow(/gRPC API could not listen on unix:.*EADDRINUSE/);
    await third.close(0);
    expect(await readFile(file, 'utf8')).toBe('keep me');
  });
});

describe('HTTP/2 connection: frames a client may not send', () => {
  it('answers PUSH_PROMISE, PING or SETTINGS on a stream, and RST_STREAM on stream 0 with GOAWAY PROTOCOL_ERROR', async () => {
    const cases: [Buffer, RegExp][] = [
      [frame(Frame.PUSH_PROMISE, Flag.END_HEADERS, 1, u32(2)), /PUSH_PROMISE/],
      [frame(Frame.PING, 0, 1, Buffer.alloc(8)), /PING on a stream/],
      [frame(Frame.SETTINGS, 0, 1), /SETTINGS on a stream/],
      [rstStream(0, H2Error.CANCEL), /RST_STREAM on stream 0/],
      [frame(Frame.DATA, Flag.END_STREAM, 0, Buffer.from('x')), /DATA on stream 0/],
      [frame(Frame.DATA, Flag.END_STREAM, 9, Buffer.from('x')), /DATA on stream 9, which was never opened/],
    ];
    for (const [bytes, debug] of cases) {
      const c = await client(port);
      c.send(bytes);
      await expectGoAway(c, H2Error.PROTOCOL_ERROR, 0, debug);
    }
  });

  it('answers SETTINGS_ENABLE_PUSH other than 0 or 1, and SETTINGS_MAX_FRAME_SIZE outside 16384 to 2^24-1, with GOAWAY PROTOCOL_ERROR', async () => {
    const cases: [number, number, RegExp][] = [
      [Setting.ENABLE_PUSH, 2, /SETTINGS_ENABLE_PUSH 2/],
      [Setting.MAX_FRAME_SIZE, 16383, /SETTINGS_MAX_FRAME_SIZE 16383/],
      [Setting.MAX_FRAME_SIZE, 0x1000000, /SETTINGS_MAX_FRAME_SIZE 16777216/],
    ];
    for (const [id, value, debug] of cases) {
      const c = await client(port, [[id, value]]);
      await expectGoAway(c, H2Error.PROTOCOL_ERROR, 0, debug);
    }
  });

  it('cuts a client that sends PINGs without reading the answers: GOAWAY ENHANCE_YOUR_CALM past 16 MiB unread', async () => {
    // A bare socket, its bytes walked once at the end: a million PING ACKs as RawH2Client frames would be slow to read.
    const socket = netConnect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    const closed = new Promise((resolve) => socket.once('close', resolve));
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.pause();
    // 17 bytes of PING ACK queued per 17-byte PING: 42 MB of them are past the 16 MiB it queues and the kernel's buffers.
    const ping = frame(Frame.PING, 0, 0, Buffer.alloc(8));
    const burst = Buffer.concat(Array.from({ length: 100_000 }, () => ping));
    socket.write(Buffer.concat([PREFACE, settingsFrame([])]));
    for (let i = 0; i < 25; i++) socket.write(burst);
    await new Promise((resolve) => setTimeout(resolve, 300));
    // The GOAWAY is behind 16 MiB of PING ACKs and the server waits 1 s for a peer to close: read them now.
    socket.resume();
    await closed;
    const all = Buffer.concat(chunks);
    let acks = 0;
    let goaway: number | undefined;
    for (let at = 0; at + 9 <= all.length; ) {
      const length = all.readUIntBE(at, 3);
      if (all[at + 3] === Frame.PING) acks++;
      if (all[at + 3] === Frame.GOAWAY) goaway = all.readUInt32BE(at + 9 + 4);
      at += 9 + length;
    }
    expect(goaway).toBe(H2Error.ENHANCE_YOUR_CALM);
    expect(acks).toBeGreaterThan(900_000);
    expect(acks).toBeLessThan(2_500_000);
  }, 15_000);

  it('ignores frames of unknown types and PRIORITY frames', async () => {
    const c = await client(port);
    c.send(frame(0xfa, 0xff, 0, Buffer.from('unknown')), frame(Frame.PRIORITY, 0, 1, Buffer.from([0, 0, 0, 0, 16])));
    c.call(1, ECHO, Buffer.from('fine'));
    await expectEcho(c, 1, Buffer.from('fine'));
  });
});
