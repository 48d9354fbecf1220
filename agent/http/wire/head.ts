/**
 * The request head of HTTP/1.1 (RFC 9112): request line and header fields,
 * parsed strictly. Whatever could frame a body two ways (request smuggling)
 * or that this server cannot frame is refused with the status RFC 9112 names.
 */

/** A request the server answers itself, with `status`, and then closes the connection. */
export class WireError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'WireError';
  }
}

export type Framing = { kind: 'length'; length: number } | { kind: 'chunked' };

export interface RequestHead {
  method: string;
  /** The origin-form target (path and query); an absolute-form target is cut down to it. */
  url: string;
  /** `1.0` or `1.1`. */
  version: string;
  /** Field names in lower case; a repeated field's values joined with ", ". */
  headers: Record<string, string>;
  framing: Framing;
  /** Whether the connection may serve another request after this one. */
  keepAlive: boolean;
  /** `Expect: 100-continue`: the client waits for a 100 before it sends the body. */
  expectContinue: boolean;
}

/** Method, target (visible ASCII and obs-text only), version. */
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~\x80-\xff]+) HTTP\/(\d)\.(\d)$/;
/** 1 for the characters of a token (RFC 9110 5.6.2): header field names. */
const TOKEN = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TOKEN[c.charCodeAt(0)] = 1;
const isOws = (c: number): boolean => c === 0x20 || c === 0x09;
/** Control characters other than HTAB, and CR or LF that are not a CRLF pair: only to word a refusal. */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const FORBIDDEN = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n/;
const ABSOLUTE_FORM = /^https?:\/\/[^/?#]*([^#]*)/i;
const DIGITS = /^[0-9]{1,15}$/;

/**
 * Parses a request head: `text` is its bytes as latin1, from the request line
 * up to (not including) the blank line that ends it. Throws WireError.
 */
export function parseHead(text: string): RequestHead {
  let eol = text.indexOf('\r\n');
  if (eol < 0) eol = text.length;
  const line = REQUEST_LINE.exec(text.slice(0, eol));
  if (!line) throw malformed('request line', text.slice(0, eol));
  const [, method = '', target = '', major, minor] = line;
  if (major !== '1') throw new WireError(505, `HTTP/${major}.${minor} is not supported; use HTTP/1.1`);
  const version = minor === '0' ? '1.0' : '1.1';
  const headers: Record<string, string> = {};
  // Header lines by hand (a regex per line costs more than the rest of the head):
  // name, ':', OWS, value, OWS; the value may hold no control character but HTAB.
  for (let at = eol + 2; at < text.length; at = eol + 2) {
    eol = text.indexOf('\r\n', at);
    if (eol < 0) eol = text.length;
    let p = at;
    while (p < eol && TOKEN[text.charCodeAt(p)] === 1) p++;
    if (p === at || p === eol || text.charCodeAt(p) !== 0x3a) throw badField(text.slice(at, eol));
    const name = text.slice(at, p).toLowerCase();
    p++;
    while (p < eol && isOws(text.charCodeAt(p))) p++;
    let end = eol;
    while (end > p && isOws(text.charCodeAt(end - 1))) end--;
    for (let i = p; i < end; i++) {
      const c = text.charCodeAt(i);
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) throw badField(text.slice(at, eol));
    }
    const value = text.slice(p, end);
    const seen = headers[name];
    if (seen !== undefined && name === 'host') throw new WireError(400, 'request has more than one Host header');
    headers[name] = seen === undefined ? value : `${seen}, ${value}`;
  }
  if (version === '1.1' && headers.host === undefined) throw new WireError(400, 'HTTP/1.1 request without a Host header');
  return { method, url: originForm(target, method), version, headers, framing: framing(headers, version), keepAlive: keepAlive(headers, version), expectContinue: version === '1.1' && expects(headers) };
}

function originForm(target: string, method: string): string {
  if (target.startsWith('/')) return target;
  if (target === '*' && method === 'OPTIONS') return target;
  const absolute = ABSOLUTE_FORM.exec(target);
  if (absolute) return (absolute[1] as string).startsWith('/') ? (absolute[1] as string) : `/${absolute[1] ?? ''}`;
  throw new WireError(400, `request target "${clip(target)}" is not a path`);
}

function framing(headers: Record<string, string>, version: string): Framing {
  const te = headers['transfer-encoding'];
  const cl = headers['content-length'];
  if (te !== undefined) {
    if (cl !== undefined) throw new WireError(400, 'request has both Transfer-Encoding and Content-Length');
    if (version === '1.0') throw new WireError(400, 'Transfer-Encoding is not allowed in an HTTP/1.0 request');
    if (te.toLowerCase() !== 'chunked') throw new WireError(501, `Transfer-Encoding "${clip(te)}" is not supported; send chunked or a Content-Length`);
    return { kind: 'chunked' };
  }
  if (cl === undefined) return { kind: 'length', length: 0 };
  if (!DIGITS.test(cl)) throw new WireError(400, `Content-Length "${clip(cl)}" is not one non-negative integer`);
  return { kind: 'length', length: Number(cl) };
}

function keepAlive(headers: Record<string, string>, version: string): boolean {
  const connection = headers.connection?.toLowerCase();
  if (connection === undefined) return version === '1.1';
  const tokens = connection.split(',').map((t) => t.trim());
  if (tokens.includes('close')) return false;
  return version === '1.1' || tokens.includes('keep-alive');
}

function expects(headers: Record<string, string>): boolean {
  const expect = headers.expect;
  if (expect === undefined) return false;
  if (expect.toLowerCase() === '100-continue') return true;
  throw new WireError(417, `Expect "${clip(expect)}" is not supported (only 100-continue is)`);
}

function badField(raw: string): WireError {
  if (raw.startsWith(' ') || raw.startsWith('\t')) return new WireError(400, `folded header lines are not allowed: "${clip(raw)}"`);
  return malformed('header line', raw);
}

function malformed(what: string, line: string): WireError {
  const why = FORBIDDEN.test(line) ? ' (a control character or a bare CR or LF)' : '';
  return new WireError(400, `malformed ${what}${why}: "${clip(line)}"`);
}

/** Quotes at most 80 characters of what the client sent. */
function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 80)}...` : s;
}
