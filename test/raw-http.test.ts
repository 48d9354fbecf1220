import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawConnection, encodeRequest, responseExtent } from '../bench/raw-http.js';

// The benchmark's load generator reads responses itself; a misread would
// count failures as answers, so its parsing is checked like product code.
describe('bench raw HTTP client: responseExtent', () => {
  const head = (s: string): Buffer => Buffer.from(s, 'latin1');

  it('waits for the whole head, then for Content-Length bytes of body', () => {
    expect(responseExtent(head('HTTP/1.1 200 OK\r\nContent-Le'))).toBeUndefined();
    expect(responseExtent(head('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc'))).toBeUndefined();
    const full = 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nabcde';
    expect(responseExtent(head(full))).toEqual({ status: 503, end: full.length });
  });

  it('refuses what it cannot delimit: chunked bodies, non-HTTP bytes, endless heads', () => {
    expect(() => responseExtent(head('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n'))).toThrow(
      'HTTP 200 response without Content-Length (chunked responses are not supported)',
    );
    expect(() => responseExtent(head('SSH-2.0-OpenSSH\r\n\r\n'))).toThrow('not an HTTP/1.x response: "SSH-2.0-OpenSSH"');
    expect(() => responseExtent(Buffer.alloc(70_000, 0x41))).toThrow('response headers longer than 65536 bytes');
  });

  it('encodes the request with one Content-Length, whatever the caller passed', () => {
    const text = encodeRequest('127.0.0.1', 8501, { path: '/v2/x', headers: { 'Content-Type': 'application/json', 'content-length': 99 }, body: Buffer.from('{}') }).toString('latin1');
    expect(text).toBe('POST /v2/x HTTP/1.1\r\nHost: 127.0.0.1:8501\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}');
  });
});

describe('bench raw HTTP client against node:http', () => {
  let server: Server;
  let port: number;
  const sockets = new Set<number>();

  beforeAll(async () => {
    server = createServer((req, res) => {
      sockets.add(req.socket.remotePort ?? 0);
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        if (body === 'chunked') {
          res.writeHead(200, { 'Content-Type': 'text/plain' });
          res.write('a');
          res.end('b');
        } else if (body === 'slow') {
          setTimeout(() => res.writeHead(200, { 'Content-Length': 0 }).end(), 500);
        } else {
          const status = Number(body) || 200;
          const text = 'x'.repeat(100_000); // several TCP reads
          res.writeHead(status, { 'Content-Length': text.length }).end(text);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  const request = (body: string): Buffer => encodeRequest('127.0.0.1', port, { path: '/', headers: {}, body: Buffer.from(body) });

  it('answers statuses in order over one kept-alive connection, bodies split across reads', async () => {
    const c = new RawConnection('127.0.0.1', port, 5_000);
    sockets.clear();
    expect(await c.send(request('200'))).toBe(200);
    expect(await c.send(request('404'))).toBe(404);
    expect(await c.send(request('503'))).toBe(503);
    expect(sockets.size).toBe(1);
    c.close();
  });

  it('rejects a chunked response and a late one, and connects again for the next request', async () => {
    const c = new RawConnection('127.0.0.1', port, 200);
    await expect(c.send(request('chunked'))).rejects.toThrow('without Content-Length');
    await expect(c.send(request('slow'))).rejects.toThrow('no answer within 200 ms');
    expect(await c.send(request('200'))).toBe(200);
    await expect(Promise.all([c.send(request('slow')), c.send(request('200'))])).rejects.toThrow('one request at a time');
    c.close();
  });
});
