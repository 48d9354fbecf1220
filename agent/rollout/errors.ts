import { isProtocolError, type ProtocolErrorCode } from '../../protocol/errors.js';
import { errorMessage } from '../errors.js';
import { isNoSpace } from '../store/no-space.js';

/** Stable codes of the ways a rollout step fails; each has one row in OUTCOMES. */
export type RolloutErrorCode =
  | 'BLOCK_HASH' // a block kept failing its sha256: the published bytes do not match the signed manifest
  | 'BLOCK_MISSING' // a block never came (not published, or retired)
  | 'FILE_HASH' // the whole file, staged or installed, does not match its signed size and sha256
  | 'ABORTED' // the agent is stopping
  | 'SUPERSEDED' // a newer desired document no longer needs the step; abandoned, not failed
  | 'NO_SPACE' // the state filesystem is full (agent/store/no-space.ts): a pull, an install, a record of the rollout
  | 'MISSING' // an installed model file is gone from the store
  | 'NO_CONNECTION' // no MQTT connection to pull blocks with
  | 'MANIFEST' // a manifest listed in a desired document does not verify (the cause says why)
  | 'SELF_TEST' // the manifest's self-test failed on the loaded version
  | 'SHADOW_REJECTED' // its shadow evaluation agreed too little with the serving version (or ran out of time with onTimeout reject)
  | 'ROLLED_BACK'; // switched in, failed its health window; what served before serves again

/** The one error shape of the rollout: a stable code, and words an operator can act on. */
export class RolloutError<C extends RolloutErrorCode = RolloutErrorCode> extends Error {
  readonly code: C;
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RolloutError';
    this.code = code;
  }
}

/** A version that switched in and failed its health window; what served before serves again. */
export class RolledBackError extends RolloutError<'ROLLED_BACK'> {
  constructor(message: string) {
    super('ROLLED_BACK', message);
    this.name = 'RolledBackError';
  }
}

/** Every code classify knows: the rollout's, the protocol's, and UNEXPECTED for an error without one. */
export type FailureCode = RolloutErrorCode | ProtocolErrorCode | 'UNEXPECTED';

export function failureCode(err: unknown): FailureCode {
  if (err instanceof RolloutError || isProtocolError(err)) return err.code;
  // Typed where it happens (NoSpaceError); an ENOSPC from a write not wrapped yet means the same.
  if (isNoSpace(err)) return 'NO_SPACE';
  return 'UNEXPECTED';
}

/**
 * The one place rollout failures become reported outcomes (docs/protocol.md
 * section 7): `rejected` when retrying cannot help, `failed` when it can.
 */
export interface Outcome {
  code: FailureCode;
  status: 'failed' | 'rejected';
  /** Model state to report for the version; undefined when the step already reported it (a rollback). */
  modelState: 'failed' | 'rejected' | undefined;
  /** Event to emit besides desired.rejected, if any. */
  event: 'verify.failed' | 'selftest.failed' | undefined;
  retryable: boolean;
  /**
   * A condition of the device, not of the version (a full disk): reported
   * `failed` at once and retried, with capped backoff, for as long as it
   * lasts; it never uses up the version's attempts.
   */
  untilFixed: boolean;
  message: string;
}

type Rule = Omit<Outcome, 'code' | 'message'>;

/** Worth another try: the version is reported `failed` only once the attempts run out. */
const RETRY: Rule = { status: 'failed', modelState: 'failed', event: undefined, retryable: true, untilFixed: false };
/** Bytes or signatures that do not match what was signed: retrying cannot help. */
const UNVERIFIED: Rule = { status: 'rejected', modelState: 'rejected', event: 'verify.failed', retryable: false, untilFixed: false };

/** A Record over the union, so a new code does not compile until it has a row. */
const OUTCOMES: Record<FailureCode, Rule> = {
  BLOCK_HASH: UNVERIFIED,
  BLOCK_MISSING: RETRY,
  FILE_HASH: UNVERIFIED,
  ABORTED: RETRY,
  // rollout.ts reports it as `step.superseded`, never as a failure; the row is for completeness.
  SUPERSEDED: { status: 'failed', modelState: undefined, event: undefined, retryable: false, untilFixed: false },
  // Freeing space fixes it; until then what serves keeps serving.
  NO_SPACE: { ...RETRY, untilFixed: true },
  MISSING: RETRY,
  NO_CONNECTION: RETRY,
  MANIFEST: UNVERIFIED,
  SELF_TEST: { status: 'rejected', modelState: 'failed', event: 'selftest.failed', retryable: false, untilFixed: false },
  // The same candidate would give the same answers again: an operator decides (a new document).
  SHADOW_REJECTED: { status: 'rejected', modelState: 'rejected', event: undefined, retryable: false, untilFixed: false },
  // Trying the same version again would break serving again: an operator decides.
  ROLLED_BACK: { status: 'failed', modelState: undefined, event: undefined, retryable: false, untilFixed: false },
  MALFORMED: UNVERIFIED,
  PAYLOAD_TYPE: UNVERIFIED,
  BAD_SIGNATURE: UNVERIFIED,
  THRESHOLD: UNVERIFIED,
  EXPIRED: UNVERIFIED,
  WRONG_TARGET: UNVERIFIED,
  REPLAY: UNVERIFIED,
  MISMATCH: UNVERIFIED,
  INCOMPATIBLE: UNVERIFIED,
  TRUST_VERSION: UNVERIFIED,
  // Load errors (ONNX Runtime) and anything unforeseen.
  UNEXPECTED: RETRY,
};

export function classify(err: unknown): Outcome {
  const code = failureCode(err);
  return { code, ...OUTCOMES[code], message: errorMessage(err) };
}
