import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeQuietly } from '../../lib/fs-atomic.js';
import { freePort } from './child.js';

/**
 * Debian's Prometheus, promtool and Alertmanager for tests (STYLE.md item 8):
 * each started as a child process on a free loopback port with its data in a
 * temp directory. .ci/run installs the packages.
 */
export const PROMETHEUS_BIN = process.env.PROMETHEUS_BIN ?? '/usr/bin/prometheus';
export const PROMTOOL_BIN = process.env.PROMTOOL_BIN ?? '/usr/bin/promtool';
export const ALERTMANAGER_BIN = process.env.ALERTMANAGER_BIN ?? '/usr/bin/prometheus-alertmanager';

/**
 * Why tests needing these binaries must be skipped, or false to run them.
 * Outside CI a missing one skips with this message; in CI it throws, because
 * a silently skipped suite would hide that the rules were never tested.
 */
export function prometheusSkipReason(bins: readonly string[] = [PROMTOOL_BIN]): string | false {
  const missing = bins.filter((b) => !existsSync(b));
  if (missing.length === 0) return false;
  const why = `${missing.join(', ')} not found; install prometheus and prometheus-alertmanager (apt-get install -y --no-install-recommends prometheus prometheus-alertmanager)`;
  if (process.env.CI) throw new Error(`${why}; CI is set, so these tests must run`);
  return why;
}

export interface ToolRun {
  code: number | null;
  output: string;
}

/** Runs promtool with `args`, `stdin` piped in when given; stdout and stderr together. */
export function promtool(args: readonly string[], stdin?: string): Promise<ToolRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(PROMTOOL_BIN, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, output }));
    child.stdin.end(stdin);
  });
}

export interface Served {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly dir: string;
  /** What it printed, the last 20,000 characters. */
  output(): string;
  /** SIGTERM (SIGKILL after 5 s), then the temp directory removed. */
  stop(): Promise<void>;
}

/** Prometheus with `config` (prometheus.yml text; files it names go in `files`, written beside it). */
export async function startPrometheus(config: string, files: Record<string, string> = {}): Promise<Served> {
  return serve('prometheus', async (dir, port) => {
    await writeFile(join(dir, 'prometheus.yml'), config);
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
    return [PROMETHEUS_BIN, `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`];
  });
}

/** Alertmanager with `config` (alertmanager.yml text), clustering off. */
export async function startAlertmanager(config: string): Promise<Served> {
  return serve('alertmanager', async (dir, port) => {
    await writeFile(join(dir, 'alertmanager.yml'), config);
    return [
      ALERTMANAGER_BIN, `--config.file=${join(dir, 'alertmanager.yml')}`, `--storage.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`, '--cluster.listen-address=',
    ];
  });
}

const READY_TIMEOUT_MS = 20_000;

async function serve(name: string, command: (dir: string, port: number) => Promise<string[]>): Promise<Served> {
  const dir = await mkdtemp(join(tmpdir(), `edgefleet-${name}-`));
  const port = await freePort();
  const [bin = '', ...args] = await command(dir, port);
  const child: ChildProcess = spawn(bin, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d: Buffer): void => {
    output = (output + d.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await removeQuietly(dir);
  };
  const until = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`${name} exited early (${child.exitCode}):\n${output}`);
    }
    if (await fetch(`${url}/-/ready`).then((r) => r.ok, () => false)) break;
    if (Date.now() > until) {
      await stop();
      throw new Error(`${name} was not ready within ${READY_TIMEOUT_MS / 1000} s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, dir, output: () => output, stop };
}
