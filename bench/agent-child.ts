/**
 * Runs the real agent in its own process for the benchmarks, so the load
 * generator in the parent never competes with it on the same event loop.
 * Usage: node --import tsx bench/agent-child.ts '<config JSON>'
 * Prints `READY <port>` on stdout once every model in models.dir serves; logs
 * (warn and up) go to stderr. SIGTERM stops the agent cleanly.
 */
import { runAgentProcess } from './agent-process.js';

const raw = process.argv[2];
if (!raw) throw new Error('usage: agent-child.ts <config JSON>');
await runAgentProcess(raw);
