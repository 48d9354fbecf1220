/**
 * A command's result, as a line for a person or, with --json, as one JSON
 * document on stdout for a script: the same facts either way.
 */
import type { CommandIo } from './command.js';

export const JSON_OPTION = { json: { type: 'boolean' } } as const;

export const JSON_HELP = '  --json                 print the result as JSON instead';

/** `text` for a person, or `data` as JSON with --json. */
export function printResult(io: CommandIo, json: boolean, text: string, data: unknown): void {
  io.out(json ? JSON.stringify(data, null, 2) : text);
}
