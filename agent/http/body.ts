import { badRequest } from '../errors.js';

/** Parses JSON, naming where it broke. */
export function parseJson(text: string | Buffer, what = 'request body'): unknown {
  try {
    return JSON.parse(typeof text === 'string' ? text : text.toString('utf8'));
  } catch (err) {
    throw badRequest(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}
