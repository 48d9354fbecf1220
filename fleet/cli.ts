/**
 * `edgefleet`: the fleet operator's CLI. A table of commands, each in its own
 * file under commands/; this file only dispatches, prints help and turns
 * errors into one line on stderr and an exit status (2 usage, 1 failure).
 */
import { agentVersion } from '../agent/version.js';
import type { Command, CommandIo } from './command.js';
import { alerts } from './commands/alerts.js';
import { caInit } from './commands/ca-init.js';
import { caServerCert } from './commands/ca-server-cert.js';
import { caSign } from './commands/ca-sign.js';
import { collect } from './commands/collect.js';
import { deploy } from './commands/deploy.js';
import { devices } from './commands/devices.js';
import { keysGenerate } from './commands/keys-generate.js';
import { modelPublish } from './commands/model-publish.js';
import { modelRetire } from './commands/model-retire.js';
import { ROLLOUT_COMMANDS } from './commands/rollout.js';
import { status } from './commands/status.js';
import { trustInit } from './commands/trust-init.js';
import { trustRotate } from './commands/trust-rotate.js';
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, errorMessage, redact } from './errors.js';

export const COMMANDS: readonly Command[] = [keysGenerate, trustInit, trustRotate, modelPublish, modelRetire, deploy, devices, status, alerts, collect, caInit, caSign, caServerCert, ...ROLLOUT_COMMANDS];

function globalHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`);
  return `usage: edgefleet <command> [options]

Publishes signed models and rollouts to an edgefleet fleet over MQTT.

Commands:
${lines.join('\n')}

Run 'edgefleet <command> --help' for a command's options, 'edgefleet version'
(or --version) for the version; --json prints a command's result as JSON.
Exit status: 0 done, 1 failed, 2 bad usage.`;
}

/** The command `argv` names and the arguments after its name. */
function findCommand(argv: readonly string[]): { command: Command; rest: string[] } {
  const [first = '', second = ''] = argv;
  const two = COMMANDS.find((c) => c.name === `${first} ${second}`);
  if (two) return { command: two, rest: argv.slice(2) };
  const one = COMMANDS.find((c) => c.name === first);
  if (one) return { command: one, rest: argv.slice(1) };
  const subs = COMMANDS.filter((c) => c.name.startsWith(`${first} `)).map((c) => c.name.split(' ')[1]);
  if (first !== '' && subs.length > 0) {
    const what = second === '' || second.startsWith('-') ? 'needs a subcommand' : `has no subcommand "${second}"`;
    throw new UsageError(`"${first}" ${what}: ${subs.join(', ')}; run 'edgefleet --help'`);
  }
  throw new UsageError(`unknown command "${first}"; run 'edgefleet --help' for the list`);
}

/** --help anywhere before a `--` terminator. */
function wantsHelp(args: readonly string[]): boolean {
  const end = args.indexOf('--');
  return (end === -1 ? args : args.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

export async function runCli(argv: readonly string[], io: CommandIo): Promise<number> {
  const [first] = argv;
  if (first === undefined) {
    io.note(globalHelp());
    return EXIT_USAGE;
  }
  if (first === '--version' || first === 'version') {
    return version(argv.slice(1), io);
  }
  if (first === '--help' || first === '-h' || first === 'help') {
    return help(argv.slice(1), io);
  }
  let name = 'edgefleet';
  try {
    const { command, rest } = findCommand(argv);
    name = `edgefleet ${command.name}`;
    if (wantsHelp(rest)) {
      io.out(command.help);
      return EXIT_OK;
    }
    await command.run(rest, io);
    return EXIT_OK;
  } catch (err) {
    const usage = err instanceof UsageError;
    const hint = usage && name !== 'edgefleet' ? ` (see '${name} --help')` : '';
    io.note(redact(`${name}: ${errorMessage(err)}${hint}`).replace(/\s*\n\s*/g, ' '));
    return usage ? EXIT_USAGE : EXIT_FAILURE;
  }
}

function help(words: readonly string[], io: CommandIo): number {
  if (words.length === 0) {
    io.out(globalHelp());
    return EXIT_OK;
  }
  if (words[0] === 'version') return version(['--help'], io);
  try {
    io.out(findCommand(words).command.help);
    return EXIT_OK;
  } catch (err) {
    io.note(`edgefleet: ${errorMessage(err)}`);
    return EXIT_USAGE;
  }
}

/** `edgefleet version [--json]`, also `edgefleet --version`: the package version. */
function version(rest: readonly string[], io: CommandIo): number {
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out('usage: edgefleet version [--json]\n\nPrints the version of edgefleet (also: edgefleet --version).');
    return EXIT_OK;
  }
  const extra = rest.filter((a) => a !== '--json');
  if (extra.length > 0) {
    io.note(`edgefleet version: unexpected "${extra[0] ?? ''}"; usage: edgefleet version [--json]`);
    return EXIT_USAGE;
  }
  io.out(rest.includes('--json') ? JSON.stringify({ version: agentVersion() }) : agentVersion());
  return EXIT_OK;
}
