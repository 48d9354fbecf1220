import { createServer, type Http2Server, type ServerHttp2Stream } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawGrpcConnection } from '../bench/raw-h2.js';

// The gRPC benchmark's Node load generator frames calls and reads answers
// itself; a misread would count failures as answers, so it is checked against
// node:http2 (nghttp2), an HTTP/2 server no one here wrote.
const framed = (body: string | Buffer): Buffer => {
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const out = Buffer.alloc(5 + bytes.length);
  out.writeUInt32BE(bytes.length, 1);
  bytes.copy(out, 5);
  return out;
};

describe('bench raw gRPC client against node:http2', () => {
  let server: Http2Server;
  let port: number;
  const paths: string[] = [];
  const received: number[] = [];

  beforeAll(async () => {
    // A small window and frame size on the server: a large request must wait for WINDOW_UPDATEs and split.
    server = createServer({ settings: { initialWindowSize: 1000 } });
    server.on('stream', (stream: ServerHttp2Stream, headers) => {
      paths.push(String(headers[':path']));
      stream.on('error', () => {}); // the stream the test resets reports it
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const all = Buffer.concat(chunks);
        received.push(all.length);
        const body = all.subarray(5).toString('latin1');
        if (body === 'slow') return setTimeout(() => !stream.closed && stream.close(), 500);
        if (body === 'reset') return stream.close(2); // INTERNAL_ERROR
        if (body === 'trailers-only') {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '5', 'grpc-message': 'model "x" not found' }, { endStream: true });
          return;
        }
        const status = body.startsWith('status ') ? body.slice(7) : '0';
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': status, 'grpc-message': status === '0' ? '' : 'bad input %22x%22' }));
        // Large requests get a large answer: the client's receive windows must be open.
        stream.end(framed(all.length > 100_000 ? Buffer.alloc(300_000, 1) : Buffer.from('ok')));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  it('answers calls in order on one connection, on odd stream ids, through windows smaller than the request', async () => {
    const c = new RawGrpcConnection({ host: '127.0.0.1', port }, '/inference.GRPCInferenceService/ModelInfer', 5_000);
    paths.length = 0;
    received.length = 0;
    await c.call(framed('a'));
    await c.call(framed(Buffer.alloc(200_000, 7)));
    await c.call(framed('b'));
    expect(paths).toEqual(Array(3).fill('/inference.GRPCInferenceService/ModelInfer'));
    expect(received).toEqual([6, 200_005, 6]);
    c.close();
  });

  it('rejects a non-zero grpc-status with its message, from trailers and from a trailers-only answer', async () => {
    const c = new RawGrpcConnection({ host: '127.0.0.1', port }, '/x/Y', 5_000);
    await expect(c.call(framed('status 3'))).rejects.toThrow('grpc-status 3: bad input "x"');
    await expect(c.call(framed('trailers-only'))).rejects.toThrow('grpc-status 5: model "x" not found');
    await c.call(framed('fine'));
    c.close();
  });

  it('rejects a reset stream, a late answer, and every call after the connection failed', async () => {
    const c = new RawGrpcConnection({ host: '127.0.0.1', port }, '/x/Y', 5_000);
    await expect(c.call(framed('reset'))).rejects.toThrow('stream reset by the server, HTTP/2 error 2');
    await c.call(framed('after a reset'));
    c.close();
    const late = new RawGrpcConnection({ host: '127.0.0.1', port }, '/x/Y', 200);
    await expect(late.call(framed('slow'))).rejects.toThrow('no answer within 200 ms');
    await expect(late.call(framed('again'))).rejects.toThrow('no answer within 200 ms');
  });

  it('refuses a second call while one is in flight', async () => {
    const c = new RawGrpcConnection({ host: '127.0.0.1', port }, '/x/Y', 5_000);
    const first = c.call(framed('one'));
    await expect(c.call(framed('two'))).rejects.toThrow('one call at a time');
    await first;
    c.close();
  });
});
