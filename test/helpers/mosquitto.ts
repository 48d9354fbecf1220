import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { removeQuietly } from '../../agent/store/fs-atomic.js';
import { freePort } from './child.js';

/**
 * A real Mosquitto broker for tests (STYLE.md item 8), on a free loopback
 * port, with persistence in a temp directory so retained messages survive
 * restart().
 */
export const MOSQUITTO_BIN = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto';

/**
 * Why broker tests must be skipped, or false to run them. Outside CI a
 * missing Mosquitto skips them with this message; in CI it throws, because a
 * silently skipped suite would hide that the broker was never tested.
 */
export function mosquittoSkipReason(): string | false {
  if (existsSync(MOSQUITTO_BIN)) return false;
  if (process.env.CI) {
    throw new Error(`${MOSQUITTO_BIN} is missing but CI is set: install mosquitto (apt-get install -y mosquitto)`);
  }
  return `${MOSQUITTO_BIN} not found; install mosquitto (apt-get install -y mosquitto) to run the MQTT tests`;
}

export interface MosquittoOptions {
  /**
   * Extra `log_type`s (say `subscribe`, `debug`): the log then goes, without
   * timestamps, to the file `logFile` names, for a test to read back.
   */
  logTypes?: readonly string[];
  /** Mosquitto's max_packet_size: the largest packet it takes from a client (1 MiB unless given). */
  maxPacketBytes?: number;
  /** max_queued_messages per persistent session (10000 unless given): beyond it Mosquitto drops new messages for that session. */
  maxQueuedMessages?: number;
  /** false: sessions, queues and retained messages are gone after a restart (true unless given). */
  persistence?: boolean;
}

export interface Mosquitto {
  readonly url: string;
  readonly port: number;
  /** The broker's log file, when logTypes were asked for. */
  readonly logFile: string | undefined;
  /** Stops the broker (saving retained messages) and starts it again on the same port. */
  restart(options?: { downMs?: number }): Promise<void>;
  /** Stops the broker, saving retained messages and sessions, until start(). */
  halt(): Promise<void>;
  /** Starts a halted broker again on the same port and state. */
  start(): Promise<void>;
  /** Stops the broker for good and removes its temp directory. */
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

export async function startMosquitto(options: MosquittoOptions = {}): Promise<Mosquitto> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-mosquitto-'));
  const port = await freePort();
  const config = join(dir, 'mosquitto.conf');
  const logFile = options.logTypes ? join(dir, 'broker.log') : undefined;
  await writeFile(config, configText(port, dir, logFile, options));
  let child = await launch(config, port);
  const halt = (): Promise<void> => terminate(child);
  const start = async (): Promise<void> => {
    child = await launch(config, port);
  };
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    logFile,
    async restart(restartOptions = {}) {
      await halt();
      if (restartOptions.downMs) await new Promise((r) => setTimeout(r, restartOptions.downMs));
      await start();
    },
    halt,
    start,
    async stop() {
      await halt();
      await removeQuietly(dir);
    },
  };
}

function configText(port: number, dir: string, logFile: string | undefined, options: MosquittoOptions): string {
  const { logTypes = [], maxPacketBytes = 1048576, maxQueuedMessages = 10000, persistence = true } = options;
  return [
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    `persistence ${persistence}`,
    `persistence_location ${dir}/`,
    'persistence_file mosquitto.db',
    // Mosquitto drops root privileges to "mosquitto", which could not write the temp dir.
    `user ${userInfo().username}`,
    // 128 KiB blocks plus headers must fit.
    `max_packet_size ${maxPacketBytes}`,
    'max_inflight_messages 0',
    `max_queued_messages ${maxQueuedMessages}`,
    ...(logFile ? [`log_dest file ${logFile}`, 'log_timestamp false'] : ['log_dest stderr']),
    'log_type error',
    'log_type warning',
    ...logTypes.map((type) => `log_type ${type}`),
    '',
  ].join('\n');
}

async function launch(config: string, port: number): Promise<ChildProcess> {
  const child = spawn(MOSQUITTO_BIN, ['-c', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let output = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<never>((_, reject) => {
    child.once('exit', (code, signal) => {
      reject(new Error(`mosquitto exited early (code ${code}, signal ${signal}): ${output.trim()}`));
    });
    child.once('error', reject);
  });
  exited.catch(() => undefined); // observed only while waiting below
  await Promise.race([waitForPort(port), exited]);
  return child;
}

async function waitForPort(port: number): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (await canConnect(port)) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not accept connections on port ${port}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** SIGTERM lets Mosquitto write its persistence file; SIGKILL only if it hangs. */
async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}
