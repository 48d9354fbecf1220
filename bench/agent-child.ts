/**
 * Runs the real agent in its own process for the benchmarks, so the load
 * generator in the parent never competes with it on the same event loop.
 * Usage: node --import tsx bench/agent-child.ts '<config JSON>'
 * Prints `READY <port>` on stdout once every model in models.dir serves; logs
 * (warn and up) go to stderr. SIGTERM stops the agent cleanly.
 */
import { pino } from 'pino';
import { parseConfig } from '../agent/config/load.js';
import { createAgent } from '../agent/main.js';

const raw = process.argv[2];
if (!raw) throw new Error('usage: agent-child.ts <config JSON>');
const config = parseConfig(JSON.parse(raw) as unknown, { source: 'bench config' });
const agent = createAgent(config, pino({ level: 'warn' }, pino.destination({ dest: 2, sync: false })));
await agent.start();
const port = agent.httpAddress?.port;
if (port === undefined) throw new Error('agent did not listen');
process.stdout.write(`READY ${port}\n`);

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  agent.stop().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`agent stop failed: ${String(err)}\n`);
      process.exit(1);
    },
  );
});
