import { expect } from 'vitest';
import { ProtocolError, type ProtocolErrorCode } from '../../protocol/errors.js';

/** Runs `fn`, expecting a ProtocolError with this code and a message matching `message`. */
export function expectError(fn: () => unknown, code: ProtocolErrorCode, message: RegExp): ProtocolError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ProtocolError);
  const err = caught as ProtocolError;
  expect(err.code).toBe(code);
  expect(err.message).toMatch(message);
  return err;
}
