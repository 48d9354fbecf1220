import { status as GrpcStatus, type ServerErrorResponse } from '@grpc/grpc-js';
import { EdgefleetError, type ErrorCode } from '../errors.js';

/**
 * The one place error codes become gRPC status codes (PROTOCOL.md section 8):
 * INVALID_ARGUMENT for a client's mistake, NOT_FOUND, UNAVAILABLE (not ready,
 * overloaded, shutting down: retry), RESOURCE_EXHAUSTED for a message over the
 * limit, UNIMPLEMENTED where HTTP answers 501.
 */
export const GRPC_STATUS: Record<ErrorCode, GrpcStatus> = {
  BAD_REQUEST: GrpcStatus.INVALID_ARGUMENT,
  NOT_FOUND: GrpcStatus.NOT_FOUND,
  UNAUTHENTICATED: GrpcStatus.UNAUTHENTICATED,
  PAYLOAD_TOO_LARGE: GrpcStatus.RESOURCE_EXHAUSTED,
  UNSUPPORTED: GrpcStatus.UNIMPLEMENTED,
  UNAVAILABLE: GrpcStatus.UNAVAILABLE,
  CONFIG: GrpcStatus.INTERNAL,
  MODEL_LOAD: GrpcStatus.INTERNAL,
  MODEL_FAULT: GrpcStatus.INTERNAL,
  INTERNAL: GrpcStatus.INTERNAL,
};

/** The error a call ends with; internal errors do not leak their details. */
export function grpcError(err: unknown): Partial<ServerErrorResponse> {
  if (err instanceof EdgefleetError) return { code: GRPC_STATUS[err.code], details: err.message };
  return { code: GrpcStatus.INTERNAL, details: 'internal error; see the agent log' };
}
