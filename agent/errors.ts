/**
 * Typed errors with stable codes. HTTP statuses are derived from the code in
 * exactly one place (agent/http/errors.ts); MQTT reports likewise use the code.
 */
export type ErrorCode =
  | 'BAD_REQUEST' // malformed body, wrong shape or type, ragged arrays, bad b64
  | 'NOT_FOUND' // unknown model, version or label
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED' // unsupported datatype or feature
  | 'UNAVAILABLE' // not ready, overloaded, shutting down
  | 'CONFIG' // configuration problems
  | 'MODEL_LOAD' // ONNX Runtime could not load or run a model
  | 'INTERNAL';

export class EdgefleetError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EdgefleetError';
    this.code = code;
  }
}

export const badRequest = (message: string): EdgefleetError => new EdgefleetError('BAD_REQUEST', message);
export const notFound = (message: string): EdgefleetError => new EdgefleetError('NOT_FOUND', message);
export const unsupported = (message: string): EdgefleetError => new EdgefleetError('UNSUPPORTED', message);
export const unavailable = (message: string): EdgefleetError => new EdgefleetError('UNAVAILABLE', message);

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
