#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from './config/load.js';
import { EdgefleetError, errorMessage } from './errors.js';
import { createLogger } from './log.js';
import { createAgent } from './main.js';
import { createNotifier } from './systemd/sd-notify.js';
import { agentVersion } from './version.js';

const USAGE = `usage: edgefleet-agent --config <file.json>

Serves ONNX models locally (TensorFlow Serving REST and Open Inference Protocol)
and, with "mqtt" configured, pulls signed model rollouts from the fleet broker.
See docs/configuration.md for the keys and environment overrides.`;

/** docs/protocol.md section 9: SIGTERM exits 0 within 10 seconds. */
const SHUTDOWN_DEADLINE_MS = 9_000;

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({ options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean' } } });
  } catch (err) {
    process.stderr.write(`edgefleet-agent: ${errorMessage(err)}\n${USAGE}\n`);
    return 2;
  }
  if (args.values.help) return void process.stdout.write(`${USAGE}\n`), 0;
  if (args.values.version) return void process.stdout.write(`${agentVersion()}\n`), 0;
  if (!args.values.config) {
    process.stderr.write(`edgefleet-agent: --config is required\n${USAGE}\n`);
    return 2;
  }
  let config;
  try {
    config = loadConfigFile(args.values.config);
  } catch (err) {
    process.stderr.write(`edgefleet-agent: ${err instanceof ConfigError ? err.message : errorMessage(err)}\n`);
    return 2;
  }
  const logger = createLogger({ level: config.log.level, deviceId: config.deviceId });
  const agent = createAgent(config, logger);
  const notifier = createNotifier({ logger: logger.child({ component: 'systemd' }) });

  let stopping: Promise<void> | undefined;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    logger.info({ signal }, 'shutting down');
    void notifier.stopping();
    const deadline = setTimeout(() => {
      logger.error('shutdown did not finish in time; exiting anyway');
      logger.flush();
      process.exit(0);
    }, SHUTDOWN_DEADLINE_MS);
    deadline.unref();
    stopping = agent.stop().finally(() => notifier.stop()).then(
      () => {
        logger.flush();
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err: errorMessage(err) }, 'shutdown failed');
        logger.flush();
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // SIGHUP: a renewed TLS certificate or a changed token file takes effect without a restart.
  process.on('SIGHUP', () => {
    logger.info({ signal: 'SIGHUP' }, 'reloading the local API certificate and tokens');
    void agent.reload();
  });
  process.on('uncaughtException', (err) => {
    logger.fatal({ err: err.stack ?? err.message }, 'uncaught exception; exiting so systemd restarts the agent');
    logger.flush();
    process.exit(1);
  });

  try {
    await agent.start();
  } catch (err) {
    // A file the config names (trust root, TLS material) is read only now; a problem with it is a config error like the others.
    const configProblem = err instanceof EdgefleetError && err.code === 'CONFIG';
    if (!configProblem) logger.fatal({ err: errorMessage(err) }, 'agent failed to start');
    await agent.stop().catch(() => undefined);
    logger.flush();
    if (!configProblem) return 1;
    process.stderr.write(`edgefleet-agent: ${new ConfigError(args.values.config, [err.message]).message}\n`);
    return 2;
  }
  if (!stopping) {
    // READY=1 only now: the HTTP API listens and the models in hand serve.
    const http = agent.httpAddress;
    await notifier.ready(http ? `serving on ${http.address}:${http.port}` : 'serving');
    await notifier.start();
  }
  return -1; // keep running
}

main().then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`edgefleet-agent: ${errorMessage(err)}\n`);
    process.exitCode = 1;
  },
);
