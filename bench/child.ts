/**
 * Runs a benchmark server (the agent or the naive baseline) in a child Node
 * process, optionally pinned to one CPU with taskset, and waits for the
 * `READY <port>` line it prints on stdout.
 *
 * Children run the JavaScript tsc compiles, as the agent runs once installed
 * (`dist/agent/bin.js`), not through tsx: tsx's transform keeps function
 * names by defining a property on every closure it creates, a cost per
 * request that production does not pay.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
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

const ROOT = new URL('../', import.meta.url);
/** Where tsconfig.bench.json compiles to. */
const BUILD = new URL('.bench-build/bench/', ROOT);
let built = false;

/** Compiles the agent and the bench's children (tsconfig.bench.json) once per run. */
function buildChildren(): void {
  if (built) return;
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', fileURLToPath(new URL('tsconfig.bench.json', ROOT))], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`compiling the bench children failed:\n${result.stdout}${result.stderr}`);
  built = true;
}

/** The compiled JavaScript of `script` (a .ts file relative to bench/), building the children first when needed. */
export function compiledScript(script: string): string {
  buildChildren();
  return fileURLToPath(new URL(script.replace(/\.ts$/, '.js'), BUILD));
}

/** Starts `node <script compiled> ...args` (`script`, a .ts file relative to bench/); `cpu` pins it (taskset -c) when given. */
export async function startChild(script: string, args: string[], cpu: number | undefined, timeoutMs = 60_000): Promise<ServerChild> {
  buildChildren();
  const file = fileURLToPath(new URL(script.replace(/\.ts$/, '.js'), BUILD));
  const nodeArgs = [file, ...args];
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
