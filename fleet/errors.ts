/**
 * The CLI's two kinds of error and the one place they become a line on stderr
 * and an exit status: 2 for a usage mistake, 1 for anything that failed.
 */

/** The operator typed something the command cannot accept; fixing the command line helps. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The command was well formed but could not be carried out (missing file, broker down, bad key). */
export class FailureError extends Error {
  override readonly name = 'FailureError';
}

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const PEM_BLOCK = /-----BEGIN[^]*?(?:-----END[^-]*-----|$)/g;

/**
 * Last line of defence: messages are written never to quote key files, but a
 * path or a flag value the operator typed could still carry a PEM block (e.g.
 * `--key "$(cat x.key)"`), and it must not reach a terminal or a CI log.
 */
export function redact(text: string): string {
  return text.replace(PEM_BLOCK, '[redacted key material]');
}
