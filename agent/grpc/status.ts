import { EdgefleetError, type ErrorCode } from '../errors.js';

/** gRPC status codes (grpc/doc/statuscodes.md); the numbers are part of the wire protocol. */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;
export type StatusCode = (typeof Status)[keyof typeof Status];

/**
 * The one place error codes become gRPC status codes (PROTOCOL.md section 8):
 * INVALID_ARGUMENT for a client's mistake, NOT_FOUND, UNAVAILABLE (not ready,
 * overloaded, shutting down: retry), RESOURCE_EXHAUSTED for a message over the
 * limit, UNIMPLEMENTED where HTTP answers 501.
 */
export const GRPC_STATUS: Record<ErrorCode, StatusCode> = {
  BAD_REQUEST: Status.INVALID_ARGUMENT,
  NOT_FOUND: Status.NOT_FOUND,
  UNAUTHENTICATED: Status.UNAUTHENTICATED,
  PAYLOAD_TOO_LARGE: Status.RESOURCE_EXHAUSTED,
  UNSUPPORTED: Status.UNIMPLEMENTED,
  UNAVAILABLE: Status.UNAVAILABLE,
  CONFIG: Status.INTERNAL,
  MODEL_LOAD: Status.INTERNAL,
  MODEL_FAULT: Status.INTERNAL,
  INTERNAL: Status.INTERNAL,
};

export interface CallStatus {
  code: StatusCode;
  details: string;
}

/** The status a call ends with; internal errors do not leak their details. */
export function grpcError(err: unknown): CallStatus {
  if (err instanceof EdgefleetError) return { code: GRPC_STATUS[err.code], details: err.message };
  return { code: Status.INTERNAL, details: 'internal error; see the agent log' };
}
