import { EdgefleetError, errorMessage, type ErrorCode, type FailureKind } from '../errors.js';

/** What a failed run is: the runtime answers for every one, so never 'internal'. */
export type RunFailureKind = Exclude<FailureKind, 'internal'>;

const CODE_OF: Record<RunFailureKind, ErrorCode> = {
  'client-input': 'BAD_REQUEST',
  'model-fault': 'MODEL_FAULT',
  overload: 'UNAVAILABLE',
};

/**
 * A request the runtime could not run, classified once where it failed. The
 * HTTP answer, telemetry and the rollout's health window all read its kind
 * (through its code, see agent/errors.ts) and nothing else.
 */
export class RunFailure extends EdgefleetError {
  declare readonly kind: RunFailureKind;
  constructor(kind: RunFailureKind, message: string, options?: { cause?: unknown }) {
    super(CODE_OF[kind], message, options);
    this.name = 'RunFailure';
  }
}

/**
 * How onnxruntime-node (1.30) words a refusal of the feeds themselves, before
 * any node runs: the request does not fit the inputs the model declares.
 * Native errors carry no status code into JavaScript, so the wording is all
 * there is; test/run-failure.test.ts produces each of these from a real session.
 */
const INPUT_REFUSALS: readonly RegExp[] = [
  /^Got invalid dimensions for input: /,
  /^Invalid rank for input: /,
  /^Unexpected input data type\. /,
  /^input '[^']*' is missing in 'feeds'\./,
  /^'fetches' contains invalid output name: /,
  /^Tensor's size\(\d+\) does not match data length\(\d+\)\./,
];

/**
 * Whose fault a failed `session.run` is. A node that fails on inputs which
 * passed every check the model's signature allows is the model's fault, even
 * when the values provoked it (a Gather index out of range): the model
 * accepted the input and could not compute an answer.
 */
export function classifyOrtError(err: unknown): RunFailureKind {
  const message = errorMessage(err);
  return INPUT_REFUSALS.some((re) => re.test(message)) ? 'client-input' : 'model-fault';
}

/** The classified failure of a run of `subject` (`model "m" version 1`); a RunFailure passes through. */
export function runFailure(err: unknown, subject: string): RunFailure {
  if (err instanceof RunFailure) return err;
  const kind = classifyOrtError(err);
  // ONNX Runtime's first line says what failed; the rest is advice or a stack.
  const detail = errorMessage(err).split('\n', 1)[0] ?? '';
  return new RunFailure(kind, `${subject} ${kind === 'client-input' ? 'rejected the input' : 'failed to run'}: ${detail}`, { cause: err });
}
