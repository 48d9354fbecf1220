/**
 * The wire server's parsers on their own: the request head (RFC 9112 sections
 * 2-3, 6-7 framing rules) and the chunked body decoder. Each refusal must carry
 * the status RFC 9112 names and a message that tells the client what was wrong.
 */
import { describe, expect, it } from 'vitest';
import { ChunkedDecoder } from '../agent/http/wire/chunked.js';
import { parseHead, WireError } from '../agent/http/wire/head.js';
import { mulberry32 } from '../models/onnx/zoo.js';

/** A head as parseHead takes it: lines joined by CRLF, without the blank line that ends it. */
const head = (...lines: string[]): string => lines.join('\r\n');

/** The WireError that `fn` throws; fails the test if it throws nothing or something else. */
function refusal(fn: () => unknown): WireError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(WireError);
    return err as WireError;
  }
  throw new Error('expected a WireError, nothing was thrown');
}

describe('parseHead: valid requests', () => {
  it('reads method, target, version and lower-cased header names', () => {
    const h = parseHead(head('POST /v2/models/m/infer?x=1 HTTP/1.1', 'Host: localhost:8501', 'Content-Type: application/json', 'X-MiXeD-CaSe: Value Kept'));
    expect(h.method).toBe('POST');
    expect(h.url).toBe('/v2/models/m/infer?x=1');
    expect(h.version).toBe('1.1');
    expect(h.headers).toEqual({ host: 'localhost:8501', 'content-type': 'application/json', 'x-mixed-case': 'Value Kept' });
    expect(h.framing).toEqual({ kind: 'length', length: 0 });
    expect(h.keepAlive).toBe(true);
    expect(h.expectContinue).toBe(false);
  });

  it('joins repeated fields with ", " in the order sent, whatever the case of their names', () => {
    const h = parseHead(head('GET / HTTP/1.1', 'Host: h', 'Accept: a/b', 'X-Tag: one', 'accept: c/d', 'x-TAG: two'));
    expect(h.headers.accept).toBe('a/b, c/d');
    expect(h.headers['x-tag']).toBe('one, two');
  });

  it('trims optional whitespace (spaces and tabs) around field values, keeps inner whitespace', () => {
    const h = parseHead(head('GET / HTTP/1.1', 'Host:h', 'X-A: \t  padded  value \t ', 'X-Empty:', 'X-Tab:\tv'));
    expect(h.headers).toEqual({ host: 'h', 'x-a': 'padded  value', 'x-empty': '', 'x-tab': 'v' });
  });

  it('frames a body by Content-Length or chunked Transfer-Encoding (any case)', () => {
    expect(parseHead(head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 12')).framing).toEqual({ kind: 'length', length: 12 });
    expect(parseHead(head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 0')).framing).toEqual({ kind: 'length', length: 0 });
    expect(parseHead(head('POST / HTTP/1.1', 'Host: h', 'Transfer-Encoding: chunked')).framing).toEqual({ kind: 'chunked' });
    expect(parseHead(head('POST / HTTP/1.1', 'Host: h', 'transfer-encoding: Chunked')).framing).toEqual({ kind: 'chunked' });
  });

  it('cuts an absolute-form target down to origin form (path and query, "/" when empty)', () => {
    expect(parseHead(head('GET http://example.com:8501/v2/health/ready?q=1 HTTP/1.1', 'Host: example.com')).url).toBe('/v2/health/ready?q=1');
    expect(parseHead(head('GET HTTPS://example.com HTTP/1.1', 'Host: example.com')).url).toBe('/');
    expect(parseHead(head('OPTIONS * HTTP/1.1', 'Host: h')).url).toBe('*');
  });

  it('gives an absolute-form target without a path the path "/" before its query (RFC 9112 3.2.1)', () => {
    expect(parseHead(head('GET http://example.com?q=1 HTTP/1.1', 'Host: example.com')).url).toBe('/?q=1');
  });

  it('applies the keep-alive rules of HTTP/1.1 (persistent unless "close") and HTTP/1.0 (closed unless "keep-alive")', () => {
    const keep = (version: string, ...fields: string[]): boolean => parseHead(head(`GET / HTTP/${version}`, 'Host: h', ...fields)).keepAlive;
    expect(keep('1.1')).toBe(true);
    expect(keep('1.1', 'Connection: close')).toBe(false);
    expect(keep('1.1', 'Connection: Close')).toBe(false);
    expect(keep('1.1', 'Connection: keep-alive, close')).toBe(false);
    expect(keep('1.1', 'Connection: x-foo', 'Connection: close')).toBe(false);
    expect(keep('1.1', 'Connection: x-foo')).toBe(true);
    expect(keep('1.0')).toBe(false);
    expect(keep('1.0', 'Connection: keep-alive')).toBe(true);
    expect(keep('1.0', 'Connection: Keep-Alive')).toBe(true);
    expect(keep('1.0', 'Connection: x-foo ,  keep-alive')).toBe(true);
    expect(keep('1.0', 'Connection: keep-alive, close')).toBe(false);
    expect(keep('1.0', 'Connection: x-keep-alive')).toBe(false);
  });

  it('takes HTTP/1.0 without Host, and a later 1.x minor version as 1.1', () => {
    const old = parseHead(head('GET / HTTP/1.0'));
    expect(old.version).toBe('1.0');
    expect(old.headers).toEqual({});
    expect(parseHead(head('GET / HTTP/1.9', 'Host: h')).version).toBe('1.1');
  });

  it('recognizes Expect: 100-continue in any case', () => {
    expect(parseHead(head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 3', 'Expect: 100-continue')).expectContinue).toBe(true);
    expect(parseHead(head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 3', 'Expect: 100-Continue')).expectContinue).toBe(true);
  });

  it('ignores Expect: 100-continue in an HTTP/1.0 request (RFC 9110 10.1.1: the server MUST ignore it)', () => {
    expect(parseHead(head('POST / HTTP/1.0', 'Content-Length: 3', 'Expect: 100-continue')).expectContinue).toBe(false);
  });

  it('accepts obs-text (bytes 0x80-0xFF, read as latin1) in field values', () => {
    expect(parseHead(head('GET / HTTP/1.1', 'Host: h', 'X-Name: caf\xe9')).headers['x-name']).toBe('caf\xe9');
  });
});

describe('parseHead: refusals', () => {
  const cases: Array<{ what: string; text: string; status: number; message: RegExp }> = [
    { what: 'a request line without a version', text: head('GET /', 'Host: h'), status: 400, message: /malformed request line.*"GET \/"/ },
    { what: 'a request line with two spaces', text: head('GET  / HTTP/1.1', 'Host: h'), status: 400, message: /malformed request line/ },
    { what: 'a lower-case protocol name', text: head('GET / http/1.1', 'Host: h'), status: 400, message: /malformed request line/ },
    { what: 'a method that is not a token', text: head('GE(T / HTTP/1.1', 'Host: h'), status: 400, message: /malformed request line/ },
    { what: 'garbage', text: 'hello', status: 400, message: /malformed request line.*"hello"/ },
    { what: 'HTTP/2.0', text: head('GET / HTTP/2.0', 'Host: h'), status: 505, message: /HTTP\/2\.0 is not supported/ },
    { what: 'HTTP/0.9', text: head('GET / HTTP/0.9', 'Host: h'), status: 505, message: /HTTP\/0\.9 is not supported/ },
    { what: 'HTTP/1.1 without Host', text: head('GET / HTTP/1.1', 'Accept: */*'), status: 400, message: /without a Host header/ },
    { what: 'a space before the colon', text: head('GET / HTTP/1.1', 'Host : h'), status: 400, message: /malformed header line.*"Host : h"/ },
    { what: 'a folded header line', text: head('GET / HTTP/1.1', 'Host: h', 'X-A: one', '  two'), status: 400, message: /folded header lines are not allowed/ },
    { what: 'a tab-folded header line', text: head('GET / HTTP/1.1', 'Host: h', 'X-A: one', '\ttwo'), status: 400, message: /folded/ },
    { what: 'a header line without a colon', text: head('GET / HTTP/1.1', 'Host: h', 'NoColon'), status: 400, message: /malformed header line.*"NoColon"/ },
    { what: 'an empty field name', text: head('GET / HTTP/1.1', 'Host: h', ': v'), status: 400, message: /malformed header line/ },
    { what: 'a NUL in a value', text: head('GET / HTTP/1.1', 'Host: h', 'X-A: a\x00b'), status: 400, message: /control character/ },
    { what: 'an ESC in the target', text: head('GET /\x1b HTTP/1.1', 'Host: h'), status: 400, message: /control character/ },
    { what: 'a DEL in a value', text: head('GET / HTTP/1.1', 'Host: h', 'X-A: \x7f'), status: 400, message: /control character/ },
    { what: 'a bare LF between lines', text: 'GET / HTTP/1.1\nHost: h', status: 400, message: /bare CR or LF/ },
    { what: 'a bare CR in a value', text: head('GET / HTTP/1.1', 'Host: h', 'X-A: a\rb'), status: 400, message: /bare CR or LF/ },
    {
      what: 'Transfer-Encoding with Content-Length',
      text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 5', 'Transfer-Encoding: chunked'),
      status: 400,
      message: /both Transfer-Encoding and Content-Length/,
    },
    { what: 'Transfer-Encoding on HTTP/1.0', text: head('POST / HTTP/1.0', 'Transfer-Encoding: chunked'), status: 400, message: /Transfer-Encoding is not allowed in an HTTP\/1\.0 request/ },
    { what: 'Transfer-Encoding gzip', text: head('POST / HTTP/1.1', 'Host: h', 'Transfer-Encoding: gzip'), status: 501, message: /Transfer-Encoding "gzip" is not supported/ },
    { what: 'Transfer-Encoding gzip, chunked', text: head('POST / HTTP/1.1', 'Host: h', 'Transfer-Encoding: gzip, chunked'), status: 501, message: /"gzip, chunked" is not supported/ },
    { what: 'two Transfer-Encoding fields', text: head('POST / HTTP/1.1', 'Host: h', 'Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'), status: 501, message: /not supported/ },
    { what: 'Content-Length "12, 12"', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 12, 12'), status: 400, message: /Content-Length "12, 12" is not one non-negative integer/ },
    { what: 'two Content-Length fields', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 12', 'Content-Length: 12'), status: 400, message: /Content-Length "12, 12"/ },
    { what: 'Content-Length "-1"', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: -1'), status: 400, message: /Content-Length "-1" is not one non-negative integer/ },
    { what: 'Content-Length "abc"', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: abc'), status: 400, message: /Content-Length "abc"/ },
    { what: 'Content-Length "+5"', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: +5'), status: 400, message: /Content-Length "\+5"/ },
    { what: 'Content-Length "0x10"', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 0x10'), status: 400, message: /Content-Length "0x10"/ },
    { what: 'Content-Length of 16 digits', text: head('POST / HTTP/1.1', 'Host: h', 'Content-Length: 1234567890123456'), status: 400, message: /Content-Length/ },
    { what: 'Expect: something else', text: head('POST / HTTP/1.1', 'Host: h', 'Expect: 200-ok'), status: 417, message: /Expect "200-ok" is not supported/ },
    { what: 'a target that is not a path', text: head('GET index.html HTTP/1.1', 'Host: h'), status: 400, message: /request target "index\.html" is not a path/ },
    { what: 'an authority-form target on GET', text: head('GET example.com:80 HTTP/1.1', 'Host: h'), status: 400, message: /is not a path/ },
    { what: 'an asterisk target on GET', text: head('GET * HTTP/1.1', 'Host: h'), status: 400, message: /request target "\*" is not a path/ },
    { what: 'an ftp absolute-form target', text: head('GET ftp://h/x HTTP/1.1', 'Host: h'), status: 400, message: /is not a path/ },
  ];

  for (const c of cases) {
    it(`refuses ${c.what} with ${c.status}`, () => {
      const err = refusal(() => parseHead(c.text));
      expect(err.status).toBe(c.status);
      expect(err.message).toMatch(c.message);
    });
  }

  it('refuses a second Host field with 400 (RFC 9112 3.2: more than one Host line MUST get 400)', () => {
    const err = refusal(() => parseHead(head('GET / HTTP/1.1', 'Host: a.example', 'Host: b.example')));
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/Host/);
  });

  it('clips what it quotes from the client to 80 characters', () => {
    const err = refusal(() => parseHead(head(`GET /${'x'.repeat(500)}`, 'Host: h')));
    expect(err.message.length).toBeLessThan(140);
    expect(err.message).toContain('...');
  });
});

/** A chunked body with an extension, a quoted extension, a trailer, and 4 bytes of the next request after it. */
const CHUNKED = Buffer.from('5;name=value\r\nhello\r\n1 ; q="a;b"\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\nX-Other: o\r\n\r\nNEXT', 'latin1');
const CHUNKED_BODY = 'hello 0123456789';
const CHUNKED_END = CHUNKED.length - 'NEXT'.length;

/**
 * Pushes `buf` to a fresh decoder in pieces ending at `cuts` (then the rest),
 * each piece as a view of `buf` from where the last one stopped, as the
 * connection does. Returns the body and the offset where the body ended.
 */
function decode(buf: Buffer, cuts: readonly number[]): { body: string; end: number | undefined; parts: number } {
  const d = new ChunkedDecoder();
  let from = 0;
  let end: number | undefined;
  for (const cut of [...cuts, buf.length]) {
    if (cut <= from) continue;
    const at = d.push(buf.subarray(0, cut), from);
    if (d.done) {
      end = at;
      break;
    }
    expect(at).toBe(cut); // not done: everything pushed is consumed
    from = cut;
  }
  expect(Buffer.concat(d.parts).length).toBe(d.size);
  return { body: Buffer.concat(d.parts).toString('latin1'), end, parts: d.parts.length };
}

describe('ChunkedDecoder', () => {
  it('decodes a body fed whole and stops right after it', () => {
    expect(decode(CHUNKED, [])).toMatchObject({ body: CHUNKED_BODY, end: CHUNKED_END });
  });

  it('decodes the same body fed one byte at a time', () => {
    const cuts = Array.from({ length: CHUNKED.length }, (_, i) => i + 1);
    const r = decode(CHUNKED, cuts);
    expect(r).toMatchObject({ body: CHUNKED_BODY, end: CHUNKED_END });
    expect(r.parts).toBe(CHUNKED_BODY.length); // one view per byte of data: nothing was copied or lost
  });

  it('decodes the same body fed in random splits (seeded)', () => {
    const rand = mulberry32(0x5eed);
    for (let round = 0; round < 300; round++) {
      const cuts: number[] = [];
      for (let at = 0; at < CHUNKED.length; ) {
        at += 1 + Math.floor(rand() * 12);
        cuts.push(at);
      }
      expect(decode(CHUNKED, cuts), `cuts ${cuts.join(',')}`).toMatchObject({ body: CHUNKED_BODY, end: CHUNKED_END });
    }
  });

  it('decodes an empty body (just the last chunk) and binary data containing CR and LF', () => {
    expect(decode(Buffer.from('0\r\n\r\n'), [])).toMatchObject({ body: '', end: 5 });
    const data = Buffer.from([13, 10, 0, 255, 13, 10, 13, 10]);
    const buf = Buffer.concat([Buffer.from('8\r\n'), data, Buffer.from('\r\n0\r\n\r\n')]);
    expect(decode(buf, [4, 7, 11]).body).toBe(data.toString('latin1'));
  });

  it('takes upper- and lower-case hex sizes and whitespace before an extension', () => {
    const buf = Buffer.from(`a\r\n${'x'.repeat(10)}\r\n1B \t;e\r\n${'y'.repeat(27)}\r\n0\r\n\r\n`);
    expect(decode(buf, []).body).toBe('x'.repeat(10) + 'y'.repeat(27));
  });

  it('consumes nothing more once done', () => {
    const d = new ChunkedDecoder();
    expect(d.push(CHUNKED, 0)).toBe(CHUNKED_END);
    expect(d.done).toBe(true);
    expect(d.push(Buffer.from('5\r\nhello\r\n0\r\n\r\n'), 0)).toBe(0);
    expect(d.size).toBe(CHUNKED_BODY.length);
  });

  const bad: Array<{ what: string; input: string; message: RegExp }> = [
    { what: 'a size that is not hex', input: 'xyz\r\n', message: /bad chunk size line "xyz"/ },
    { what: 'a negative size', input: '-1\r\n', message: /bad chunk size line "-1"/ },
    { what: 'a 0x prefix', input: '0x5\r\nhello\r\n', message: /bad chunk size line "0x5"/ },
    { what: 'an empty size line', input: '\r\n', message: /bad chunk size line ""/ },
    { what: 'whitespace before the size', input: ' 5\r\nhello\r\n', message: /bad chunk size line/ },
    { what: 'a size of 14 hex digits', input: '10000000000000\r\n', message: /bad chunk size line/ },
    { what: 'a size line ended by a bare LF', input: '5\nhello\r\n', message: /not ended by CRLF/ },
    { what: 'no CRLF after the data', input: '3\r\nabc0\r\n\r\n', message: /chunk longer than its size/ },
    { what: 'a bare LF after the data', input: '3\r\nabc\n0\r\n\r\n', message: /not ended by CRLF/ },
    { what: 'data longer than its size', input: '3\r\nabcd\r\n0\r\n\r\n', message: /chunk longer than its size/ },
    { what: 'a trailer line ended by a bare LF', input: '0\r\nX: y\n\r\n', message: /not ended by CRLF/ },
  ];

  for (const c of bad) {
    it(`throws WireError 400 for ${c.what}`, () => {
      const err = refusal(() => new ChunkedDecoder().push(Buffer.from(c.input, 'latin1'), 0));
      expect(err.status).toBe(400);
      expect(err.message).toMatch(c.message);
    });
  }

  it('throws WireError 400 for a size line over 4 KiB, even when it comes in small pieces without a LF', () => {
    const d = new ChunkedDecoder();
    const piece = Buffer.from(`;${'e'.repeat(99)}`);
    d.push(Buffer.from('5'), 0);
    let pushed = 1;
    const err = refusal(() => {
      for (let i = 0; i < 100; i++) {
        d.push(piece, 0);
        pushed += piece.length;
      }
    });
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/line over 4 KiB/);
    expect(pushed).toBeLessThanOrEqual(4096 + piece.length); // refused as soon as the line passed the limit
  });

  it('throws WireError 400 for a trailer line over 4 KiB', () => {
    const err = refusal(() => new ChunkedDecoder().push(Buffer.from(`0\r\nX-Big: ${'v'.repeat(5000)}\r\n\r\n`), 0));
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/line over 4 KiB/);
  });

  it('accepts a size line of exactly 4 KiB with its CRLF inside the limit', () => {
    // 4094 characters + CRLF = 4096: at the limit, not over it.
    const line = `5;${'e'.repeat(4092)}`;
    expect(line.length + 2).toBe(4096);
    expect(decode(Buffer.from(`${line}\r\nhello\r\n0\r\n\r\n`), []).body).toBe('hello');
  });
});
