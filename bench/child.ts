/**
 * Runs a benchmark server (the agent or the naive baseline) in a child Node
 * process, optionally pinned to one CPU with taskset, and waits for the
 * `READY <port>` line it prints on stdout.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { processCpuSeconds } from './cpu.js';

export interface ServerChild {
  port: number;
  pid: number;
  /** CPU seconds (user + system) the child has used so far, from /proc; NaN where unavailable. */
  cpuSeconds(): number;
  /** The last lines the child wrote to stderr. */
  stderrTail(): string;
  stop(): Promise<void>;
}

/** Children still running; killed if this process exits or is interrupted mid-run. */
const live = new Set<ChildProcess>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => process.exit(130));
  }
}

let tasksetChecked: boolean | undefined;
export function hasTaskset(): boolean {
  tasksetChecked ??= spawnSync('taskset', ['-V'], { stdio: 'ignore' }).status === 0;
  return tasksetChecked;
}

/** Starts `node --import tsx <script> ...args`; `cpu` pins it (taskset -c) when given. */
export async function startChild(script: string, args: string[], cpu: number | undefined, timeoutMs = 60_000): Promise<ServerChild> {
  const file = fileURLToPath(new URL(script, import.meta.url));
  const nodeArgs = ['--import', 'tsx', file, ...args];
  const [cmd, argv] = cpu !== undefined ? ['taskset', ['-c', String(cpu), process.execPath, ...nodeArgs]] : [process.execPath, nodeArgs];
  const child: ChildProcess = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ORT_DISABLE_TELEMETRY: '1' } });
  hookExit();
  live.add(child);
  child.once('exit', () => live.delete(child));
  let tail = '';
  child.stderr?.on('data', (c: Buffer) => {
    tail = (tail + c.toString('utf8')).slice(-4000);
  });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${script} did not report READY within ${timeoutMs} ms\n${tail}`));
    }, timeoutMs);
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      const m = /READY (\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited (${code ?? signal}) before READY\n${tail}`));
    });
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  const pid = child.pid as number;
  return {
    port,
    pid,
    cpuSeconds: () => processCpuSeconds(pid),
    stderrTail: () => tail,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}
