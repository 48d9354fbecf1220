import { describe, expect, it } from 'vitest';
import { ProtocolError } from '../protocol/errors.js';
import { EdgefleetError } from '../agent/errors.js';
import { BlockPullError } from '../agent/rollout/block-puller.js';
import { RolledBackError, RolloutError, classify, failureCode } from '../agent/rollout/errors.js';
import { StoreError } from '../agent/rollout/model-store.js';
import { SelfTestError } from '../agent/rollout/self-test.js';

const outcome = (err: unknown) => {
  const { code, status, modelState, event, retryable } = classify(err);
  return { code, status, modelState, event, retryable };
};

describe('rollout error classification', () => {
  it('reads the code, whatever class carries it', () => {
    expect(outcome(new BlockPullError('BLOCK_HASH', 'x', 3))).toEqual({ code: 'BLOCK_HASH', status: 'rejected', modelState: 'rejected', event: 'verify.failed', retryable: false });
    expect(outcome(new RolloutError('BLOCK_HASH', 'x'))).toEqual(outcome(new BlockPullError('BLOCK_HASH', 'x', 3)));
    expect(outcome(new StoreError('FILE_HASH', 'x'))).toEqual(outcome(new BlockPullError('FILE_HASH', 'x')));
    expect(outcome(new SelfTestError('x'))).toEqual({ code: 'SELF_TEST', status: 'rejected', modelState: 'failed', event: 'selftest.failed', retryable: false });
    expect(outcome(new RolledBackError('x'))).toEqual({ code: 'ROLLED_BACK', status: 'failed', modelState: undefined, event: undefined, retryable: false });
  });

  it('retries what another try can fix', () => {
    for (const code of ['BLOCK_MISSING', 'ABORTED', 'NO_SPACE', 'MISSING', 'NO_CONNECTION'] as const) {
      expect(outcome(new RolloutError(code, 'x')), code).toEqual({ code, status: 'failed', modelState: 'failed', event: undefined, retryable: true });
    }
  });

  it('rejects every protocol failure and a manifest that does not verify', () => {
    expect(outcome(new ProtocolError('EXPIRED', 'x'))).toEqual({ code: 'EXPIRED', status: 'rejected', modelState: 'rejected', event: 'verify.failed', retryable: false });
    expect(outcome(new RolloutError('MANIFEST', 'x', { cause: new ProtocolError('BAD_SIGNATURE', 'y') })).code).toBe('MANIFEST');
    expect(outcome(new RolloutError('MANIFEST', 'x')).status).toBe('rejected');
  });

  it('treats an error of another family as unexpected, even with a code-like field', () => {
    const sysErr = Object.assign(new Error('open failed'), { code: 'BLOCK_HASH' });
    expect(failureCode(sysErr)).toBe('UNEXPECTED');
    expect(failureCode(new EdgefleetError('MODEL_LOAD', 'ort'))).toBe('UNEXPECTED');
    expect(failureCode('a string')).toBe('UNEXPECTED');
    expect(outcome(new Error('ort failed'))).toEqual({ code: 'UNEXPECTED', status: 'failed', modelState: 'failed', event: undefined, retryable: true });
    expect(classify(new Error('ort failed')).message).toBe('ort failed');
  });
});
