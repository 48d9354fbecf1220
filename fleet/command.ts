/** What every `edgefleet` command implements, and what it may write to. */
import type { ProgressStream } from './progress.js';

export interface CommandIo {
  /** Results a script may read: keyids, tables, JSON. */
  out: (line: string) => void;
  /** Notes and warnings for the operator (stderr). */
  note: (line: string) => void;
  /** stderr itself, for the progress bar. */
  stderr: ProgressStream;
  cwd: string;
}

export interface Command {
  /** The words that select it, e.g. "keys generate". */
  name: string;
  /** One line for `edgefleet --help`. */
  summary: string;
  /** The full text for `edgefleet NAME --help`. */
  help: string;
  run(args: string[], io: CommandIo): Promise<void>;
}
