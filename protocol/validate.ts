/**
 * Schema validation that reports every problem at once, as ProtocolError
 * 'MALFORMED' with one line per problem (`artifact.blockSize: ...`).
 */
import type { z } from 'zod';
import { ProtocolError } from './errors.js';

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(document)' : out;
}

export function formatIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((issue) => {
    // Zod says "expected number, received undefined" for a missing field; say it plainly.
    const missing = issue.code === 'invalid_type' && issue.message.endsWith('received undefined');
    return `${formatPath(issue.path)}: ${missing ? `is required (${issue.expected})` : issue.message}`;
  });
}

/** Parses `value` with `schema`, or throws MALFORMED listing every problem. */
export function validate<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const problems = formatIssues(result.error.issues);
  throw new ProtocolError('MALFORMED', `${what} is invalid: ${problems.join('; ')}`, { problems });
}

/** UTF-8 JSON bytes (e.g. a verified payload or an MQTT message) → validated document. */
export function parsePayload<S extends z.ZodType>(schema: S, bytes: Uint8Array | string, what: string): z.output<S> {
  let value: unknown;
  try {
    const text = typeof bytes === 'string' ? bytes : new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    value = JSON.parse(text);
  } catch (err) {
    throw new ProtocolError('MALFORMED', `${what} is not UTF-8 JSON: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
  return validate(schema, value, what);
}

/** JSON bytes of a document after checking it against its schema, for signing or publishing. */
export function encodeDocument<S extends z.ZodType>(schema: S, doc: z.input<S>, what: string): Buffer {
  // Encode the parsed output, so readers see exactly what the schema accepted (defaults included).
  return Buffer.from(JSON.stringify(validate(schema, doc, what)), 'utf8');
}
