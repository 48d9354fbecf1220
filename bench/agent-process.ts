/**
 * Start-up and shutdown shared by the bench's agent child processes: parses
 * the config JSON given on the command line, starts the real agent (logs warn
 * and up to stderr), prints `READY <port>` on stdout once every model serves,
 * and stops the agent cleanly on SIGTERM (exit 0, or 1 if stopping fails).
 */
import { pino } from 'pino';
import { parseConfig } from '../agent/config/load.js';
import { createAgent } from '../agent/main.js';

/** `beforeReady` runs after the agent started, right before `READY` is printed. */
export async function runAgentProcess(raw: string, beforeReady?: () => void): Promise<void> {
  const config = parseConfig(JSON.parse(raw) as unknown, { source: 'bench config' });
  const agent = createAgent(config, pino({ level: 'warn' }, pino.destination({ dest: 2, sync: false })));
  await agent.start();
  const port = agent.httpAddress?.port;
  if (port === undefined) throw new Error('agent did not listen');
  beforeReady?.();
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
}
