/**
 * WireServer over real TCP sockets, driven with raw bytes: keep-alive,
 * pipelining, bodies in any split, 100-continue, HEAD, limits, refusals,
 * timeouts, drain on close(), and back-pressure from a client that does not
 * read. No HTTP client library: what is checked is exactly what is on the wire.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WireServer, type WireError, type WireRequest, type WireResponse, type WireServerOptions } from '../agent/http/wire/server.js';

interface Echo {
  method: string;
  url: string;
  headers: Record<string, string>;
  bodyLength: number;
  bodyText: string;
  bodyTooLarge: boolean;
}

/** What the echo handler answers: the request as the server handed it over. */
function echo(req: WireRequest): string {
  const e: Echo = { method: req.method, url: req.url, headers: { ...req.headers }, bodyLength: req.body.length, bodyText: req.body.toString('latin1'), bodyTooLarge: req.bodyTooLarge };
  return JSON.stringify(e);
}

interface Started {
  server: WireServer;
  port: number;
  /** Every request the handler got, in order. */
  calls: WireRequest[];
  refused: WireError[];
  handlerErrors: unknown[];
  /** Resolves the next time the handler is entered for /slow. */
  slowEntered: () => Promise<void>;
}

const servers: WireServer[] = [];
const clients: RawClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.socket.destroy();
  for (const s of servers.splice(0)) {
    s.destroyAll();
    await s.close();
  }
});

/**
 * A WireServer on 127.0.0.1 with the test routes:
 *   /slow?ms=N  answers the echo after N ms (default 150)
 *   /throw      throws synchronously
 *   /n?...      answers its url as text/plain (small answers, for volume)
 *   /big?...    answers its url and 2000 dots as text/plain (answers that fill socket buffers)
 *   anything    answers the echo at once; 413 when the body passed the limit
 */
async function start(options: Partial<WireServerOptions> = {}): Promise<Started> {
  const calls: WireRequest[] = [];
  const refused: WireError[] = [];
  const handlerErrors: unknown[] = [];
  const slowWaiters: Array<() => void> = [];
  const server = new WireServer({
    bodyLimitBytes: 1024,
    onRequest(req: WireRequest, res: WireResponse) {
      calls.push(req);
      const path = req.url.split('?')[0];
      if (path === '/slow') {
        const ms = Number(new URLSearchParams(req.url.split('?')[1] ?? '').get('ms') ?? 150);
        for (const w of slowWaiters.splice(0)) w();
        setTimeout(() => res.send(200, 'application/json', echo(req)), ms);
        return;
      }
      if (path === '/throw') throw new Error('handler blew up');
      if (path === '/n') {
        res.send(200, 'text/plain', req.url);
        return;
      }
      if (path === '/big') {
        res.send(200, 'text/plain', `${req.url}\n${'.'.repeat(2000)}`);
        return;
      }
      res.send(req.bodyTooLarge ? 413 : 200, 'application/json', echo(req), { 'X-Handled': calls.length });
    },
    onRefused: (err) => refused.push(err),
    onHandlerError: (err) => handlerErrors.push(err),
    ...options,
  });
  servers.push(server);
  const address = await server.listen(0, '127.0.0.1');
  return {
    server,
    port: address.port,
    calls,
    refused,
    handlerErrors,
    slowEntered: () => new Promise<void>((resolve) => slowWaiters.push(resolve)),
  };
}

interface RawResponse {
  status: number;
  reason: string;
  /** Lower-case names; a repeated field keeps its last value (the server sends none twice). */
  headers: Record<string, string>;
  /** Field names in the order and case sent, to catch duplicates. */
  names: string[];
  body: Buffer;
  text: string;
}

/** A raw TCP client: writes bytes, and reads responses one at a time from the byte stream. */
class RawClient {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  /** The server ended its side (FIN) or the socket closed. */
  ended = false;
  closed = false;
  errors: Error[] = [];
  readonly endedAt: Promise<number>;

  private constructor(readonly socket: Socket) {
    let markEnded: (at: number) => void = () => undefined;
    this.endedAt = new Promise((resolve) => (markEnded = resolve));
    socket.on('data', (chunk: Buffer) => {
      this.buf = Buffer.concat([this.buf, chunk]);
      this.poke();
    });
    socket.on('end', () => {
      this.ended = true;
      markEnded(Date.now());
      this.poke();
    });
    socket.on('close', () => {
      this.ended = true;
      this.closed = true;
      markEnded(Date.now());
      this.poke();
    });
    socket.on('error', (err) => this.errors.push(err));
  }

  /** `allowHalfOpen`: keep sending after the server ended its side, as a client busy uploading does. */
  static connect(port: number, options: { allowHalfOpen?: boolean } = {}): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host: '127.0.0.1', noDelay: true, allowHalfOpen: options.allowHalfOpen ?? false });
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        const client = new RawClient(socket);
        clients.push(client);
        resolve(client);
      });
    });
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Bytes received and not yet taken as a response. */
  get unread(): number {
    return this.buf.length;
  }

  write(data: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data, (err) => (err ? reject(err) : resolve())));
  }

  /** Waits until `ready()` holds, more bytes arrive or the stream ends, or `timeoutMs` passes. */
  private async waitFor(ready: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      if (this.ended) throw new Error(`connection ended while waiting for ${what}; unread: ${JSON.stringify(this.buf.toString('latin1').slice(0, 200))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms; unread: ${JSON.stringify(this.buf.toString('latin1').slice(0, 200))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /**
   * Takes the next response from the stream: status line, header fields, and
   * Content-Length bytes of body (none for 1xx, or when `noBody`, as for HEAD).
   */
  async read(options: { noBody?: boolean; timeoutMs?: number } = {}): Promise<RawResponse> {
    const timeoutMs = options.timeoutMs ?? 3000;
    await this.waitFor(() => this.buf.includes('\r\n\r\n'), timeoutMs, 'response head');
    const end = this.buf.indexOf('\r\n\r\n');
    const lines = this.buf.toString('latin1', 0, end).split('\r\n');
    const statusLine = /^HTTP\/1\.1 (\d{3}) (.*)$/.exec(lines[0] ?? '');
    if (!statusLine) throw new Error(`not a status line: ${JSON.stringify(lines[0])}`);
    const status = Number(statusLine[1]);
    const headers: Record<string, string> = {};
    const names: string[] = [];
    for (const line of lines.slice(1)) {
      const field = /^([^:\s]+): (.*)$/.exec(line);
      if (!field) throw new Error(`malformed response header line ${JSON.stringify(line)}`);
      names.push(field[1] as string);
      headers[(field[1] as string).toLowerCase()] = field[2] as string;
    }
    let length = 0;
    if (status >= 200 && !options.noBody) {
      const cl = headers['content-length'];
      if (cl === undefined || !/^\d+$/.test(cl)) throw new Error(`response without a valid Content-Length: ${JSON.stringify(lines)}`);
      length = Number(cl);
    }
    const total = end + 4 + length;
    await this.waitFor(() => this.buf.length >= total, timeoutMs, `${length} bytes of body`);
    const body = Buffer.from(this.buf.subarray(end + 4, total));
    this.buf = this.buf.subarray(total);
    return { status, reason: statusLine[2] as string, headers, names, body, text: body.toString('utf8') };
  }

  async readEcho(options: { timeoutMs?: number } = {}): Promise<Echo & { response: RawResponse }> {
    const response = await this.read(options);
    expect(response.headers['content-type']).toBe('application/json');
    return { ...(JSON.parse(response.text) as Echo), response };
  }

  /** Resolves once the server ended the connection; fails if it does not within `timeoutMs`. */
  async waitEnded(timeoutMs = 2000): Promise<void> {
    await this.waitFor(() => this.ended, timeoutMs, 'end of the connection');
  }
}

const get = (path: string, ...fields: string[]): string => `GET ${path} HTTP/1.1\r\nHost: test\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n`;
const post = (path: string, body: string, ...fields: string[]): string =>
  `POST ${path} HTTP/1.1\r\nHost: test\r\nContent-Length: ${Buffer.byteLength(body, 'latin1')}\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n${body}`;
const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `cond` every few ms until it holds (or fails the test after `timeoutMs`). */
async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** The fields every keep-alive answer carries, checked exactly. */
function expectKeepAlive(r: RawResponse, timeoutSeconds: number): void {
  expect(r.headers.connection).toBe('keep-alive');
  expect(r.headers['keep-alive']).toBe(`timeout=${timeoutSeconds}`);
  expect(Number(r.headers['content-length'])).toBe(r.body.length);
  expect(r.headers.date).toMatch(/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/);
  expect(Math.abs(Date.parse(r.headers.date as string) - Date.now())).toBeLessThan(5000);
  expect(new Set(r.names.map((n) => n.toLowerCase())).size).toBe(r.names.length); // no field twice
}

describe('WireServer: keep-alive and pipelining', () => {
  it('serves several requests on one socket, each with keep-alive fields, Date and an exact Content-Length', async () => {
    const s = await start({ keepAliveTimeoutMs: 7000 });
    const c = await RawClient.connect(s.port);
    for (let i = 0; i < 4; i++) {
      await c.write(post(`/echo/${i}`, `body ${i} é`));
      const e = await c.readEcho();
      expect(e.response.status).toBe(200);
      expect(e.response.reason).toBe('OK');
      expect(e).toMatchObject({ method: 'POST', url: `/echo/${i}`, bodyText: `body ${i} é`, bodyLength: 7 + String(i).length, bodyTooLarge: false });
      expect(e.response.headers['x-handled']).toBe(String(i + 1));
      expectKeepAlive(e.response, 7);
    }
    expect(c.ended).toBe(false);
    expect(s.server.connectionCount).toBe(1);
  });

  it('counts Content-Length of a utf8 answer in bytes, not characters', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(get('/n?é=ü'));
    const r = await c.read();
    // The url goes out as latin1 bytes and comes back as a utf8 string: 6 characters, 8 bytes.
    expect(r.text).toBe('/n?é=ü');
    expect(r.headers['content-length']).toBe('8');
  });

  it('answers 3 pipelined requests written at once in request order, the slow one first', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(get('/slow?ms=120') + post('/fast1', 'a') + get('/fast2'));
    const urls = [(await c.readEcho()).url, (await c.readEcho()).url, (await c.readEcho()).url];
    expect(urls).toEqual(['/slow?ms=120', '/fast1', '/fast2']);
    expect(s.calls.map((r) => r.url)).toEqual(urls);
    expect(c.unread).toBe(0);
  });

  it('answers many small pipelined requests that arrive in one read, with a synchronous handler, all in order', async () => {
    // ~2000 requests per 64 KiB socket read: answering each one inside the
    // previous one's call chain must not exhaust the stack.
    const s = await start();
    const c = await RawClient.connect(s.port);
    const count = 3000;
    let batch = '';
    for (let i = 0; i < count; i++) batch += get(`/n?${i}`);
    await c.write(batch);
    const answers: string[] = [];
    try {
      for (let i = 0; i < count; i++) answers.push((await c.read({ timeoutMs: 2000 })).text);
    } catch {
      // The connection stalled: the checks below say how far it got and why.
    }
    expect(s.handlerErrors.map(String)).toEqual([]);
    expect(answers.length, `answers received of ${count}`).toBe(count);
    expect(answers).toEqual(Array.from({ length: count }, (_, i) => `/n?${i}`));
    expect(s.calls.length).toBe(count);
  });

  it('parses a request and its body identically whatever byte it is split at', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    const request = post('/split?q=1', 'hello\r\n\r\nworld', 'X-A:  spaced ', 'x-a: again');
    const expected: Partial<Echo> = { method: 'POST', url: '/split?q=1', bodyText: 'hello\r\n\r\nworld', bodyLength: 14 };
    for (let at = 1; at < request.length; at++) {
      await c.write(request.slice(0, at));
      await tick();
      await c.write(request.slice(at));
      const e = await c.readEcho();
      expect(e, `split at ${at}`).toMatchObject(expected);
      expect(e.headers['x-a']).toBe('spaced, again');
    }
    expect(s.calls.length).toBe(request.length - 1);
    expect(s.server.connectionCount).toBe(1);
  });

  it('parses a chunked request written one byte at a time like one written at once', async () => {
    const s = await start();
    const request =
      'POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n' + '4;ext=1\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\n';
    const whole = await RawClient.connect(s.port);
    await whole.write(request);
    const once = await whole.readEcho();
    const slow = await RawClient.connect(s.port);
    for (const byte of Buffer.from(request, 'latin1')) {
      await slow.write(Buffer.of(byte));
      await tick();
    }
    const bytewise = await slow.readEcho();
    expect(once.bodyText).toBe('wikipedia in\r\n\r\nchunks.');
    expect(bytewise.bodyText).toBe(once.bodyText);
    expect(bytewise.headers).toEqual(once.headers);
    expect(bytewise.response.status).toBe(200);
  });
});

describe('WireServer: bodies', () => {
  it('hands over a Content-Length body, a chunked body with extension and trailer, and an empty body', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(post('/cl', '{"x":[1,2,3]}', 'Content-Type: application/json'));
    expect(await c.readEcho()).toMatchObject({ url: '/cl', bodyText: '{"x":[1,2,3]}', bodyLength: 13 });

    await c.write('POST /te HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3;name="v"\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n');
    const chunked = await c.readEcho();
    expect(chunked).toMatchObject({ url: '/te', bodyText: 'abcde', bodyLength: 5 });
    expect(chunked.headers['transfer-encoding']).toBe('chunked');
    expect(chunked.headers['x-sum']).toBeUndefined(); // trailers are read and dropped

    await c.write('POST /empty HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n');
    expect(await c.readEcho()).toMatchObject({ url: '/empty', bodyText: '', bodyLength: 0 });
    await c.write('POST /empty-chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    expect(await c.readEcho()).toMatchObject({ url: '/empty-chunked', bodyLength: 0 });
    await c.write(get('/after'));
    expectKeepAlive((await c.readEcho()).response, 65);
  });

  it('hands over intact a body that arrives in the same packet as its head, and one in a later packet', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const headText = `POST /bin HTTP/1.1\r\nHost: test\r\nContent-Length: ${binary.length}\r\n\r\n`;
    await c.write(Buffer.concat([Buffer.from(headText), binary]));
    expect((await c.readEcho()).bodyText).toBe(binary.toString('latin1'));
    await c.write(headText);
    await tick();
    await c.write(binary.subarray(0, 100));
    await tick();
    await c.write(binary.subarray(100));
    expect((await c.readEcho()).bodyText).toBe(binary.toString('latin1'));
    expect(s.calls.map((r) => r.body.equals(binary))).toEqual([true, true]);
  });

  it('sends 100 Continue before the client sends the body, then the final answer', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write('POST /expect HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
    const interim = await c.read();
    expect(interim.status).toBe(100);
    expect(interim.reason).toBe('Continue');
    expect(interim.names).toEqual([]);
    expect(s.calls.length).toBe(0);
    await c.write('hello');
    const final = await c.readEcho();
    expect(final.response.status).toBe(200);
    expect(final.bodyText).toBe('hello');
    expect(c.unread).toBe(0);
  });

  it('sends no 100 Continue to an HTTP/1.0 client (RFC 9110 15.2: a server MUST NOT send 1xx to HTTP/1.0)', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write('POST /old-expect HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
    await until(() => s.server.connectionCount === 1, 1000, 'the connection');
    await sleep(20); // the head alone reaches the server first
    await c.write('hello');
    const first = await c.read();
    expect(first.status).toBe(200);
    expect(first.text).toContain('"bodyText":"hello"');
  });

  it('answers a body over the limit declared by Content-Length without a 100 Continue', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write('POST /too-large HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n');
    const r = await c.readEcho();
    expect(r.response.status).toBe(413);
    expect(r.response.headers.connection).toBe('close');
    expect(r).toMatchObject({ bodyTooLarge: true, bodyLength: 0 });
  });

  it('answers a Content-Length body over the limit with Connection: close while the client keeps sending it, without a reset', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port, { allowHalfOpen: true });
    const size = 1_000_000;
    await c.write(`POST /too-large HTTP/1.1\r\nHost: test\r\nContent-Length: ${size}\r\n\r\n`);
    // The client sends the whole body without waiting, as clients do.
    const piece = Buffer.alloc(16 * 1024, 0x61);
    const sending = (async () => {
      for (let sent = 0; sent < size; sent += piece.length) await c.write(piece.subarray(0, Math.min(piece.length, size - sent)));
    })();
    const r = await c.readEcho();
    expect(r.response.status).toBe(413);
    expect(r.response.headers.connection).toBe('close');
    expect(r).toMatchObject({ bodyTooLarge: true, bodyLength: 0, bodyText: '' });
    await sending;
    c.socket.end();
    await c.waitEnded();
    await until(() => c.closed, 2000, 'client socket closed');
    expect(c.errors).toEqual([]); // no ECONNRESET / EPIPE: the server read and dropped the rest
    expect(s.calls.length).toBe(1);
  });

  it('answers a chunked body that passes the limit with Connection: close while the client keeps sending, without a reset', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port, { allowHalfOpen: true });
    await c.write('POST /too-large-chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n');
    const chunk = `200\r\n${'b'.repeat(0x200)}\r\n`;
    for (let i = 0; i < 40; i++) {
      await c.write(chunk); // 20 KiB in all, the limit is 1 KiB
      await tick();
    }
    const r = await c.readEcho();
    expect(r.response.status).toBe(413);
    expect(r.response.headers.connection).toBe('close');
    expect(r).toMatchObject({ bodyTooLarge: true, bodyLength: 0 });
    await c.write('0\r\n\r\n');
    c.socket.end();
    await until(() => c.closed, 2000, 'client socket closed');
    expect(c.errors).toEqual([]);
    expect(s.calls.length).toBe(1);
  });

  it('takes a body of exactly the limit', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(post('/limit', 'z'.repeat(1024)));
    const r = await c.readEcho();
    expect(r).toMatchObject({ bodyTooLarge: false, bodyLength: 1024 });
    expect(r.response.headers.connection).toBe('keep-alive');
  });
});

describe('WireServer: connection handling', () => {
  it('closes an HTTP/1.0 connection without keep-alive after the answer', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write('GET /old HTTP/1.0\r\n\r\n');
    const r = await c.readEcho();
    expect(r.url).toBe('/old');
    expect(r.response.headers.connection).toBe('close');
    expect(r.response.headers['keep-alive']).toBeUndefined();
    await c.waitEnded();
  });

  it('keeps an HTTP/1.0 connection that asks for keep-alive', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write('GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
    expectKeepAlive((await c.readEcho()).response, 65);
    await c.write('GET /b HTTP/1.0\r\n\r\n');
    const r = await c.readEcho();
    expect(r.url).toBe('/b');
    expect(r.response.headers.connection).toBe('close');
    await c.waitEnded();
  });

  it('closes an HTTP/1.1 connection after a request with Connection: close, dropping what was pipelined after it', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(get('/last', 'Connection: close') + get('/never'));
    const r = await c.readEcho();
    expect(r.url).toBe('/last');
    expect(r.response.headers.connection).toBe('close');
    await c.waitEnded();
    expect(c.unread).toBe(0);
    expect(s.calls.map((q) => q.url)).toEqual(['/last']);
  });

  it('answers HEAD with the full Content-Length and no body, the next pipelined answer right after', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(`HEAD /h HTTP/1.1\r\nHost: test\r\n\r\n${get('/after-head')}`);
    const head = await c.read({ noBody: true });
    expect(head.status).toBe(200);
    // The same answer as a GET would get: the echo of a HEAD with these headers.
    const full = echo({ method: 'HEAD', url: '/h', headers: { host: 'test' }, body: Buffer.alloc(0), bodyTooLarge: false });
    expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(full));
    expect(head.body.length).toBe(0);
    const next = await c.readEcho();
    expect(next.response.status).toBe(200);
    expect(next.url).toBe('/after-head');
  });

  it('ignores empty lines before a request line', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(`\r\n\r\n${get('/after-blank')}`);
    expect((await c.readEcho()).url).toBe('/after-blank');
  });

  it('answers 500 when the handler throws, reports it, and keeps serving on the same and new connections', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(get('/throw'));
    const r = await c.read();
    expect(r.status).toBe(500);
    expect(r.headers['content-type']).toBe('application/json');
    expect((JSON.parse(r.text) as { error: string }).error).toMatch(/internal error/);
    expect(s.handlerErrors).toHaveLength(1);
    expect((s.handlerErrors[0] as Error).message).toBe('handler blew up');
    await c.write(get('/ok'));
    expect((await c.readEcho()).url).toBe('/ok');
    const d = await RawClient.connect(s.port);
    await d.write(get('/ok2'));
    expect((await d.readEcho()).url).toBe('/ok2');
  });
});

describe('WireServer: refusals', () => {
  const cases: Array<{ what: string; raw: string; status: number; error: RegExp; options?: Partial<WireServerOptions> }> = [
    { what: 'a malformed request line', raw: 'GET /\r\nHost: test\r\n\r\n', status: 400, error: /malformed request line/ },
    { what: 'a missing Host on HTTP/1.1', raw: 'GET / HTTP/1.1\r\nAccept: */*\r\n\r\n', status: 400, error: /without a Host header/ },
    { what: 'Content-Length with Transfer-Encoding', raw: 'POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n', status: 400, error: /both Transfer-Encoding and Content-Length/ },
    { what: 'Transfer-Encoding gzip', raw: 'POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n', status: 501, error: /Transfer-Encoding "gzip" is not supported/ },
    { what: 'HTTP/2.0', raw: 'GET / HTTP/2.0\r\nHost: test\r\n\r\n', status: 505, error: /HTTP\/2\.0 is not supported/ },
    { what: 'Expect: something else', raw: 'POST / HTTP/1.1\r\nHost: test\r\nExpect: gimme\r\nContent-Length: 1\r\n\r\nx', status: 417, error: /Expect "gimme" is not supported/ },
    { what: 'a head with bare LF line ends', raw: 'GET / HTTP/1.1\nHost: test\n\n', status: 400, error: /bare LF/ },
    { what: 'a bad chunk size', raw: 'POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', status: 400, error: /bad chunk size line "zz"/ },
    {
      what: 'a complete head over maxHeaderBytes',
      raw: `GET / HTTP/1.1\r\nHost: test\r\nX-Big: ${'v'.repeat(2000)}\r\n\r\n`,
      status: 431,
      error: /request head is larger than 1024 bytes/,
      options: { maxHeaderBytes: 1024 },
    },
    {
      what: 'an unfinished head over maxHeaderBytes',
      raw: `GET / HTTP/1.1\r\nHost: test\r\nX-Big: ${'v'.repeat(2000)}`,
      status: 431,
      error: /request head is larger than 1024 bytes/,
      options: { maxHeaderBytes: 1024 },
    },
  ];

  for (const c of cases) {
    it(`refuses ${c.what} with ${c.status}, a JSON error, and closes; the server keeps serving`, async () => {
      const s = await start(c.options);
      const bad = await RawClient.connect(s.port);
      await bad.write(c.raw);
      const r = await bad.read();
      expect(r.status).toBe(c.status);
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.headers.connection).toBe('close');
      expect(Number(r.headers['content-length'])).toBe(r.body.length);
      expect((JSON.parse(r.text) as { error: string }).error).toMatch(c.error);
      await bad.waitEnded();
      expect(bad.unread).toBe(0);
      expect(s.refused.map((e) => e.status)).toEqual([c.status]);
      expect(s.refused[0]?.message).toMatch(c.error);
      expect(s.calls).toHaveLength(0);
      const good = await RawClient.connect(s.port);
      await good.write(get('/fine'));
      expect((await good.readEcho()).url).toBe('/fine');
    });
  }

  it('refuses a malformed request pipelined after a good one only after answering the good one', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(`${get('/slow?ms=50')}GET / HTTP/9.9\r\nHost: test\r\n\r\n`);
    expect((await c.readEcho()).url).toBe('/slow?ms=50');
    const r = await c.read();
    expect(r.status).toBe(505);
    expect(r.reason).toBe('HTTP Version Not Supported');
    await c.waitEnded();
  });
});

describe('WireServer: timeouts', () => {
  it('answers 408 and closes when the head does not arrive within headersTimeoutMs', async () => {
    const s = await start({ headersTimeoutMs: 300 });
    const c = await RawClient.connect(s.port);
    const t0 = Date.now();
    await c.write('GET /never-finished HTTP/1.1\r\nHost: test\r\n');
    const r = await c.read({ timeoutMs: 2500 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    expect(r.status).toBe(408);
    expect(r.headers.connection).toBe('close');
    expect((JSON.parse(r.text) as { error: string }).error).toMatch(/request head not received within 300 ms/);
    await c.waitEnded();
    expect(s.refused.map((e) => e.status)).toEqual([408]);
  });

  it('answers 408 and closes when the body does not arrive within requestTimeoutMs', async () => {
    const s = await start({ requestTimeoutMs: 300 });
    const c = await RawClient.connect(s.port);
    await c.write('POST /partial HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc');
    const r = await c.read({ timeoutMs: 2500 });
    expect(r.status).toBe(408);
    expect((JSON.parse(r.text) as { error: string }).error).toMatch(/request body not received within 300 ms/);
    await c.waitEnded();
    expect(s.calls).toHaveLength(0);
  });

  it('closes an idle kept-alive connection after keepAliveTimeoutMs, not before', async () => {
    const s = await start({ keepAliveTimeoutMs: 300 });
    const c = await RawClient.connect(s.port);
    await c.write(get('/once'));
    await c.readEcho();
    const answeredAt = Date.now();
    const endedAt = await Promise.race([c.endedAt, sleep(2500).then(() => undefined)]);
    expect(endedAt, 'server did not close the idle connection').toBeDefined();
    expect((endedAt as number) - answeredAt).toBeGreaterThanOrEqual(300);
    await until(() => s.server.connectionCount === 0, 1000, 'server to drop the connection');
  });

  it('does not time out a connection whose handler is still working', async () => {
    const s = await start({ keepAliveTimeoutMs: 300, headersTimeoutMs: 300 });
    const c = await RawClient.connect(s.port);
    await c.write(get('/slow?ms=1300')); // spans at least one sweep
    const r = await c.readEcho({ timeoutMs: 3000 });
    expect(r.response.status).toBe(200);
    expect(r.response.headers.connection).toBe('keep-alive');
  });
});

describe('WireServer: close()', () => {
  it('closes an idle connection at once and refuses new connections', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(get('/one'));
    await c.readEcho();
    const t0 = Date.now();
    const closing = s.server.close();
    await c.waitEnded(500);
    await closing;
    expect(Date.now() - t0).toBeLessThan(500); // not left to the sweeper or a timeout
    await expect(RawClient.connect(s.port)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('does not hand the handler a request that arrives on an idle connection close() already ended', async () => {
    // Its answer could never be written (the server's side is ended), so the
    // handler must not act on it: the client sees the close and may retry.
    const s = await start();
    const c = await RawClient.connect(s.port);
    await c.write(get('/first'));
    await c.readEcho();
    const closing = s.server.close();
    await c.write(post('/late', 'x')).catch(() => undefined); // crosses the server's FIN
    await c.waitEnded(1000);
    await closing;
    expect(s.calls.map((r) => r.url)).toEqual(['/first']);
  });

  it('lets a request in the handler finish with Connection: close, then resolves', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    const entered = s.slowEntered();
    await c.write(get('/slow?ms=200'));
    await entered;
    let resolved = false;
    const closing = s.server.close().then(() => (resolved = true));
    await sleep(50);
    expect(resolved).toBe(false); // still answering
    expect(c.ended).toBe(false);
    const r = await c.readEcho();
    expect(resolved).toBe(false); // the answer comes first
    expect(r.response.status).toBe(200);
    expect(r.url).toBe('/slow?ms=200');
    expect(r.response.headers.connection).toBe('close');
    await c.waitEnded();
    await closing;
    await expect(RawClient.connect(s.port)).rejects.toThrow(/ECONNREFUSED/);
  });
});

describe('WireServer: a client that does not read its answers', () => {
  it('stops reading its requests instead of buffering without bound, then answers everything in order', async () => {
    const s = await start();
    const c = await RawClient.connect(s.port);
    c.socket.pause(); // read nothing: the answers back up into the server
    // ~200-byte requests (so one 64 KiB read holds a few hundred, not thousands:
    // this test is about back-pressure, not call depth) with 2 KB answers, which
    // fill the socket buffers long before all are answered.
    const parts: string[] = [];
    let bytes = 0;
    for (let i = 0; bytes < 2 * 1024 * 1024; i++) {
      const request = get(`/big?${i}`, `X-Pad: ${'p'.repeat(150)}`);
      parts.push(request);
      bytes += request.length;
    }
    const total = parts.length;
    c.socket.write(parts.join('')); // not awaited: what the server does not take stays with the client and the kernel

    // Wait until the handler count stops growing.
    let last = -1;
    let stableSince = Date.now();
    await until(
      () => {
        if (s.calls.length !== last) {
          last = s.calls.length;
          stableSince = Date.now();
        }
        return s.calls.length > 0 && Date.now() - stableSince > 300;
      },
      8000,
      'the handler count to settle',
    );
    const handled = s.calls.length;
    expect(handled, `${handled} of ${total} handled while the client read nothing`).toBeLessThan(total / 2);

    c.socket.resume();
    const wrong: string[] = [];
    for (let i = 0; i < total; i++) {
      const r = await c.read({ timeoutMs: 5000 });
      const url = r.text.split('\n')[0];
      if (url !== `/big?${i}` || r.body.length !== url.length + 2001) wrong.push(`answer ${i}: ${url} (${r.body.length} bytes)`);
    }
    expect(wrong.slice(0, 5)).toEqual([]);
    expect(s.calls.length).toBe(total);
    expect(c.unread).toBe(0);
    expect(s.handlerErrors).toEqual([]);
  });
});
