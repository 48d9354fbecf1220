import { isProtocolError } from '../../protocol/errors.js';
import { errorMessage } from '../errors.js';
import { BlockPullError } from './block-puller.js';
import { StoreError } from './model-store.js';
import { SelfTestError } from './self-test.js';

/** A version that switched in and failed its health window; what served before serves again. */
export class RolledBackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RolledBackError';
  }
}

/**
 * The one place rollout failures become reported outcomes (PROTOCOL.md
 * section 7): `rejected` when retrying cannot help, `failed` when it can.
 */
export interface Outcome {
  status: 'failed' | 'rejected';
  /** Model state to report for the version. */
  modelState: 'failed' | 'rejected';
  /** Event to emit besides desired.rejected, if any. */
  event: 'verify.failed' | 'selftest.failed' | undefined;
  retryable: boolean;
  message: string;
}

export function classify(err: unknown): Outcome {
  const message = errorMessage(err);
  if (err instanceof BlockPullError) {
    if (err.code === 'BLOCK_MISSING') return { status: 'failed', modelState: 'failed', event: undefined, retryable: true, message };
    if (err.code === 'ABORTED') return { status: 'failed', modelState: 'failed', event: undefined, retryable: true, message };
    return { status: 'rejected', modelState: 'rejected', event: 'verify.failed', retryable: false, message };
  }
  if (err instanceof StoreError) {
    if (err.code === 'FILE_HASH') return { status: 'rejected', modelState: 'rejected', event: 'verify.failed', retryable: false, message };
    return { status: 'failed', modelState: 'failed', event: undefined, retryable: true, message };
  }
  // Trying the same version again would break serving again: an operator decides.
  if (err instanceof RolledBackError) return { status: 'failed', modelState: 'failed', event: undefined, retryable: false, message };
  if (err instanceof SelfTestError) return { status: 'rejected', modelState: 'failed', event: 'selftest.failed', retryable: false, message };
  if (isProtocolError(err)) return { status: 'rejected', modelState: 'rejected', event: 'verify.failed', retryable: false, message };
  // Load errors and anything unexpected: worth another try.
  return { status: 'failed', modelState: 'failed', event: undefined, retryable: true, message };
}
