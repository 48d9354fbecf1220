import { EdgefleetError, type ErrorCode } from '../errors.js';
import type { WireResponse } from './wire/server.js';

/** The one place error codes become HTTP statuses. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  BAD_REQUEST: 400,
  NOT_FOUND: 404,
  UNAUTHENTICATED: 401,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED: 501,
  UNAVAILABLE: 503,
  CONFIG: 500,
  MODEL_LOAD: 500,
  MODEL_FAULT: 500,
  INTERNAL: 500,
};

export function statusOf(err: unknown): number {
  return err instanceof EdgefleetError ? HTTP_STATUS[err.code] : 500;
}

/** Writes `{"error": message}`; internal errors do not leak their details. */
export function sendError(res: WireResponse, err: unknown): number {
  const status = statusOf(err);
  const message = err instanceof EdgefleetError ? err.message : 'internal error; see the agent log';
  sendJson(res, status, { error: message });
  return status;
}

export function sendJson(res: WireResponse, status: number, body: unknown): void {
  res.send(status, 'application/json', JSON.stringify(body));
}
