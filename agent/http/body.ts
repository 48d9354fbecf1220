import type { IncomingMessage } from 'node:http';
import { EdgefleetError, badRequest } from '../errors.js';

const tooLarge = (limit: number): EdgefleetError =>
  new EdgefleetError('PAYLOAD_TOO_LARGE', `request body is larger than the limit of ${limit} bytes (http.bodyLimitBytes)`);

/**
 * Reads a request body into one Buffer, refusing it as soon as it passes
 * `limit`, and calls `done` exactly once. A callback rather than a promise:
 * this runs for every inference request.
 */
export function readBody(req: IncomingMessage, limit: number, done: (err: Error | undefined, body: Buffer) => void): void {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    req.resume(); // drain so the connection can answer
    done(tooLarge(limit), EMPTY);
    return;
  }
  let chunks: Buffer[] = [];
  let size = 0;
  let settled = false;
  const settle = (err: Error | undefined, body: Buffer): void => {
    if (settled) return;
    settled = true;
    done(err, body);
  };
  req.on('data', (chunk: Buffer) => {
    if (settled) return;
    size += chunk.length;
    if (size > limit) {
      chunks = [];
      req.resume();
      settle(tooLarge(limit), EMPTY);
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => settle(undefined, chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size)));
  req.on('error', (err) => settle(badRequest(`request body could not be read: ${err.message}`), EMPTY));
}

const EMPTY = Buffer.alloc(0);

/** Parses JSON, naming where it broke. */
export function parseJson(text: string | Buffer, what = 'request body'): unknown {
  try {
    return JSON.parse(typeof text === 'string' ? text : text.toString('utf8'));
  } catch (err) {
    throw badRequest(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}
