/**
 * Typed errors with stable codes. HTTP statuses are derived from the code in
 * exactly one place (agent/http/errors.ts); MQTT reports likewise use the code.
 */
export type ErrorCode =
  | 'BAD_REQUEST' // malformed body, wrong shape or type, ragged arrays, bad b64, an input the model rejects
  | 'NOT_FOUND' // unknown model, version or label
  | 'UNAUTHENTICATED' // the local API wants a bearer token and got none or a wrong one
  | 'PAYLOAD_TOO_LARGE'
  | 'UNSUPPORTED' // unsupported datatype or feature
  | 'UNAVAILABLE' // not ready, overloaded, shutting down
  | 'CONFIG' // configuration problems
  | 'MODEL_LOAD' // ONNX Runtime could not load a model or run its warm-up
  | 'MODEL_FAULT' // a loaded model failed on a request that met its declared signature
  | 'INTERNAL';

/**
 * Whose failure an error is. Every reader takes this one meaning from it: the
 * HTTP status follows from the code, telemetry counts `client-input` apart
 * from the rest, and a rollout's health window counts only `model-fault`.
 */
export type FailureKind = 'client-input' | 'model-fault' | 'overload' | 'internal';

const KIND_OF: Record<ErrorCode, FailureKind> = {
  BAD_REQUEST: 'client-input',
  NOT_FOUND: 'client-input',
  UNAUTHENTICATED: 'client-input',
  PAYLOAD_TOO_LARGE: 'client-input',
  UNSUPPORTED: 'client-input', // the request asks for what this server does not do
  UNAVAILABLE: 'overload',
  CONFIG: 'internal',
  MODEL_LOAD: 'model-fault',
  MODEL_FAULT: 'model-fault',
  INTERNAL: 'internal',
};

export class EdgefleetError extends Error {
  readonly code: ErrorCode;
  readonly kind: FailureKind;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EdgefleetError';
    this.code = code;
    this.kind = KIND_OF[code];
  }
}

/** Anything thrown that is not an EdgefleetError is a fault of the agent's own. */
export function failureKind(err: unknown): FailureKind {
  return err instanceof EdgefleetError ? err.kind : 'internal';
}

export const badRequest = (message: string): EdgefleetError => new EdgefleetError('BAD_REQUEST', message);
export const notFound = (message: string): EdgefleetError => new EdgefleetError('NOT_FOUND', message);
export const unsupported = (message: string): EdgefleetError => new EdgefleetError('UNSUPPORTED', message);
export const unavailable = (message: string): EdgefleetError => new EdgefleetError('UNAVAILABLE', message);

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
