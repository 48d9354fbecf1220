import type { IncomingMessage } from 'node:http';
import { EdgefleetError, badRequest } from '../errors.js';

const tooLarge = (limit: number): EdgefleetError =>
  new EdgefleetError('PAYLOAD_TOO_LARGE', `request body is larger than the limit of ${limit} bytes (http.bodyLimitBytes)`);

/** Reads a request body into one Buffer, refusing it as soon as it passes `limit`. */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    req.resume(); // drain so the connection can answer
    return Promise.reject(tooLarge(limit));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        chunks.length = 0;
        req.removeAllListeners('data');
        req.resume();
        reject(tooLarge(limit));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size)));
    req.on('error', (err) => reject(badRequest(`request body could not be read: ${err.message}`)));
  });
}

/** Parses JSON, naming where it broke. */
export function parseJson(text: string | Buffer, what = 'request body'): unknown {
  try {
    return JSON.parse(typeof text === 'string' ? text : text.toString('utf8'));
  } catch (err) {
    throw badRequest(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}
