import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';

export const REPO = join(import.meta.dirname, '..', '..');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface ChildAgent {
  proc: ChildProcess;
  url: string;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Runs the real `edgefleet-agent` entry point in a child process, as systemd would. */
export async function spawnAgent(dir: string, config: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): Promise<ChildAgent> {
  const port = await freePort();
  const file = join(dir, 'agent.json');
  await writeFile(file, JSON.stringify({ deviceId: 'child', stateDir: join(dir, 'state'), http: { port }, runtime: { executionProviders: ['cpu'], warmupRuns: 1 }, ...config }));
  const proc = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'agent', 'bin.ts'), '--config', file], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + 20_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`agent exited early (${proc.exitCode}):\n${out}`);
    const ready = await fetch(`${url}/v2/health/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > until) {
      proc.kill('SIGKILL');
      throw new Error(`agent did not become ready:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { proc, url, output: () => out, exited };
}

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `edgefleet` CLI (fleet/bin.ts) in a child process; `env` goes over this process's environment. */
export function runEdgefleet(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'fleet/bin.ts', ...args], { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
