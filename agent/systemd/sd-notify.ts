/**
 * sd_notify(3) without a native addon: tells systemd the agent is ready,
 * alive (watchdog) and stopping. No-op when NOTIFY_SOCKET is unset (not run
 * by systemd, or not Type=notify); a failure to notify is logged, never fatal.
 *
 * Why a `systemd-notify` child and not a socket: the notify socket is an
 * AF_UNIX datagram socket (a path, or an abstract name written "@name"), and
 * Node can send neither: `dgram` is UDP only, `net` is stream only (connecting
 * to a SOCK_DGRAM socket fails with EPROTOTYPE). `unix-dgram` and `sd-notify`
 * from npm are native addons, which the agent does not ship. `systemd-notify`
 * is part of systemd itself, so it exists wherever systemd set NOTIFY_SOCKET,
 * and it handles both socket kinds.
 *
 * The cost: systemd sees the child's PID, not the agent's (an unprivileged
 * process cannot put another PID in its SCM_CREDENTIALS), so the unit needs
 * NotifyAccess=all. Since systemd 246 `systemd-notify` waits until systemd has
 * processed the message (BARRIER=1), so the child is still alive when systemd
 * looks up which unit it belongs to. Messages are sent one at a time, in order.
 * As sd_notify's unset_environment does, the notifier takes NOTIFY_SOCKET and
 * the watchdog variables out of process.env, so no other child of the agent
 * (ONNX Runtime's, systeminformation's) can speak for it.
 */
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';

/** Sends one notification (newline-free `KEY=VALUE` fields) to `socket`. */
export type NotifySend = (socket: string, fields: readonly string[]) => Promise<void>;

export interface NotifierOptions {
  logger: Logger;
  /** Where NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are read; default process.env, from which they are then removed. */
  env?: NodeJS.ProcessEnv;
  /** This process's PID, compared with WATCHDOG_PID; default process.pid. */
  pid?: number;
  /** The transport; default runs `systemd-notify`. */
  send?: NotifySend;
}

export interface Notifier {
  /** False when NOTIFY_SOCKET is unset: every method is a no-op. */
  readonly enabled: boolean;
  /** How often start() sends WATCHDOG=1, or undefined when systemd does not watch this process. */
  readonly watchdogIntervalMs: number | undefined;
  /** READY=1: startup finished (HTTP API listening, models in hand serving). */
  ready(status?: string): Promise<void>;
  /** STOPPING=1: shutdown began. */
  stopping(status?: string): Promise<void>;
  /** One WATCHDOG=1 keep-alive. */
  watchdog(): Promise<void>;
  /** STATUS=text, shown by `systemctl status`. */
  status(text: string): Promise<void>;
  /** Begins WATCHDOG=1 keep-alives from the event loop, every watchdogIntervalMs. Call after ready(). */
  start(): Promise<void>;
  /** Ends keep-alives and waits (bounded) for messages still being sent. */
  stop(): Promise<void>;
}

/** systemd-notify's own barrier wait is 5 s; a child still running after this is killed. */
const SEND_TIMEOUT_MS = 6_000;

/**
 * The keep-alive interval systemd asks for: half of WATCHDOG_USEC, as
 * sd_watchdog_enabled(3) recommends, when WATCHDOG_PID is unset or names `pid`.
 */
export function watchdogInterval(env: NodeJS.ProcessEnv, pid: number): number | undefined {
  const usec = env.WATCHDOG_USEC;
  if (usec === undefined || !/^\d+$/.test(usec) || Number(usec) <= 0) return undefined;
  const owner = env.WATCHDOG_PID;
  if (owner !== undefined && owner !== '' && owner !== String(pid)) return undefined;
  return Math.max(1, Math.floor(Number(usec) / 2000));
}

/** STATUS= is one line of the datagram: newlines would start a new field. */
const oneLine = (text: string): string => text.replace(/[\r\n]+/g, ' ').trim();

export function createNotifier(options: NotifierOptions): Notifier {
  const env = options.env ?? process.env;
  const socket = env.NOTIFY_SOCKET;
  const logger = options.logger;
  const interval = socket ? watchdogInterval(env, options.pid ?? process.pid) : undefined;
  if (options.env === undefined) {
    delete process.env.NOTIFY_SOCKET;
    delete process.env.WATCHDOG_USEC;
    delete process.env.WATCHDOG_PID;
  }
  const send = options.send ?? spawnSystemdNotify(env);
  let queue: Promise<void> = Promise.resolve();
  let failing = false;
  let timer: NodeJS.Timeout | undefined;
  let keepAliveInFlight = false;

  const notify = (fields: string[]): Promise<void> => {
    if (!socket) return Promise.resolve();
    queue = queue.then(async () => {
      try {
        await send(socket, fields);
        if (failing) logger.info('systemd notifications work again');
        failing = false;
        logger.debug({ fields }, 'notified systemd');
      } catch (err) {
        // Warn once per outage, not every keep-alive.
        const log = failing ? logger.debug.bind(logger) : logger.warn.bind(logger);
        log({ err: err instanceof Error ? err.message : String(err), fields }, 'could not notify systemd');
        failing = true;
      }
    });
    return queue;
  };
  const withStatus = (field: string, status: string | undefined): string[] =>
    status === undefined ? [field] : [field, `STATUS=${oneLine(status)}`];

  return {
    enabled: socket !== undefined && socket !== '',
    watchdogIntervalMs: interval,
    ready: (status) => notify(withStatus('READY=1', status)),
    stopping: (status) => notify(withStatus('STOPPING=1', status)),
    watchdog: () => notify(['WATCHDOG=1']),
    status: (text) => notify([`STATUS=${oneLine(text)}`]),
    async start() {
      if (interval === undefined || timer) return;
      logger.debug({ intervalMs: interval }, 'systemd watchdog keep-alives started');
      timer = setInterval(() => {
        // A keep-alive still queued behind a slow send is enough; do not pile up children.
        if (keepAliveInFlight) return;
        keepAliveInFlight = true;
        void notify(['WATCHDOG=1']).finally(() => (keepAliveInFlight = false));
      }, interval);
      // The HTTP server keeps the process alive, never the keep-alive timer.
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      timer = undefined;
      await queue;
    },
  };
}

/** The default transport: `systemd-notify FIELD...` with NOTIFY_SOCKET set to `socket`. */
export function spawnSystemdNotify(env: NodeJS.ProcessEnv, command = 'systemd-notify'): NotifySend {
  return (socket, fields) =>
    new Promise((resolve, reject) => {
      const child = spawn(command, [...fields], { env: { ...env, NOTIFY_SOCKET: socket }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-500)));
      const timer = setTimeout(() => child.kill('SIGKILL'), SEND_TIMEOUT_MS);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new Error(`${command} ${signal ? `killed by ${signal}` : `exited ${code}`}${stderr.trim() ? `: ${stderr.trim()}` : ''}`));
      });
    });
}
