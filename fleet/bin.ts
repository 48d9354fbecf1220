#!/usr/bin/env node
/** Entry point of the `edgefleet` fleet operator CLI (see cli.ts). */
import { runCli } from './cli.js';

process.exitCode = await runCli(process.argv.slice(2), {
  out: (line) => process.stdout.write(`${line}\n`),
  note: (line) => process.stderr.write(`${line}\n`),
  stderr: process.stderr,
  cwd: process.cwd(),
});
