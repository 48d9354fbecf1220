/**
 * Typed protocol errors with stable codes. The agent maps every code to a
 * `rejected` report (retrying the same document cannot help); fleet tools show
 * the message to the operator. Messages never contain key material.
 */
export type ProtocolErrorCode =
  | 'MALFORMED' // not JSON, not an envelope, or a document that fails its schema
  | 'PAYLOAD_TYPE' // envelope carries another kind of document
  | 'BAD_SIGNATURE' // a trusted key's signature does not verify (tampering or corruption)
  | 'THRESHOLD' // not enough valid signatures from the role's keys
  | 'EXPIRED' // the document, or the trust used to check it, has expired
  | 'WRONG_TARGET' // desired document for another device/group or another topic
  | 'REPLAY' // desired serial not above the last applied one
  | 'MISMATCH' // manifest name/version differs from the desired entry
  | 'INCOMPATIBLE' // wrong arch or agent too old
  | 'TRUST_VERSION'; // trust rotation not exactly current + 1

export interface ProtocolErrorOptions {
  cause?: unknown;
  /** Every problem found, for documents that fail their schema. */
  problems?: readonly string[];
  /** Serial of a verified desired document that was rejected, for the report. */
  serial?: number;
}

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  readonly problems: readonly string[];
  readonly serial: number | undefined;

  constructor(code: ProtocolErrorCode, message: string, options: ProtocolErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ProtocolError';
    this.code = code;
    this.problems = options.problems ?? [];
    this.serial = options.serial;
  }
}

export function isProtocolError(err: unknown, code?: ProtocolErrorCode): err is ProtocolError {
  return err instanceof ProtocolError && (code === undefined || err.code === code);
}
