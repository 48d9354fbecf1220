import { createRequire } from 'node:module';
import { cpus } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';

/**
 * systeminformation, run in a worker thread. On Linux its cpuTemperature()
 * and currentLoad() call execSync (a shell reading /sys and /proc): 10-20 ms
 * of frozen event loop per call on a PC, more on a Pi, and forever if a
 * sensor read hangs. A Promise timeout cannot interrupt synchronous code, so
 * the calls run off the serving thread; a call that overruns its timeout gets
 * the worker terminated and a fresh one next time. The worker costs about
 * 15 MiB of RSS, capped by resourceLimits.
 *
 * The worker is inline source rather than a file so it loads the same way
 * under tsx, vitest and the compiled dist/; systeminformation is resolved
 * here and handed over as an absolute path.
 */

export interface SystemInfoSample {
  /** systeminformation currentLoad().currentLoad: busy share of all CPUs since the last call. */
  cpuPct: number | null;
  memTotalBytes: number | null;
  /** mem().available: what applications could still use without swapping. */
  memAvailableBytes: number | null;
  /** cpuTemperature().main; null where the board exposes no sensor. */
  tempC: number | null;
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const si = require(workerData.systeminformation);
const settle = (p) => p.then((v) => v, () => null);
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
parentPort.on('message', async (id) => {
  const [load, mem, temp] = await Promise.all([settle(si.currentLoad()), settle(si.mem()), settle(si.cpuTemperature())]);
  parentPort.postMessage({
    id,
    cpuPct: num(load && load.currentLoad),
    memTotalBytes: num(mem && mem.total),
    memAvailableBytes: num(mem && mem.available),
    tempC: num(temp && temp.main),
  });
});
`;

export class SystemInfoWorker {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, (sample: SystemInfoSample | undefined) => void>();

  constructor(private readonly logger: Logger) {}

  /** One sample, or undefined when the worker failed or took longer than `timeoutMs`. */
  read(timeoutMs: number): Promise<SystemInfoSample | undefined> {
    const worker = this.ensureWorker();
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.logger.warn({ timeoutMs }, 'systeminformation did not answer in time; restarting its worker');
        this.kill();
      }, timeoutMs);
      this.pending.set(id, (sample) => {
        clearTimeout(timer);
        resolve(sample);
      });
      worker.postMessage(id);
    });
  }

  async stop(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    for (const id of [...this.pending.keys()]) this.settle(id, undefined);
    await worker?.terminate();
  }

  private ensureWorker(): Worker {
    if (this.worker) return this.worker;
    const systeminformation = createRequire(import.meta.url).resolve('systeminformation');
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { systeminformation },
      resourceLimits: { maxOldGenerationSizeMb: 48 },
      stdout: true, // systeminformation may print; keep it out of the JSON log
      stderr: true,
    });
    worker.unref(); // never what keeps the process alive
    worker.stdout.resume();
    worker.stderr.resume();
    worker.on('message', (msg: SystemInfoSample & { id: number }) => {
      const { id, ...sample } = msg;
      this.settle(id, sample);
    });
    worker.on('error', (err) => {
      this.logger.warn({ err: errorMessage(err) }, 'systeminformation worker failed');
      if (this.worker === worker) this.kill();
    });
    worker.on('exit', () => {
      if (this.worker === worker) this.kill();
    });
    this.worker = worker;
    return worker;
  }

  private settle(id: number, sample: SystemInfoSample | undefined): void {
    const resolve = this.pending.get(id);
    this.pending.delete(id);
    resolve?.(sample);
  }

  /** Drops the worker (a stuck one keeps running its native call until it returns) and fails what waits on it. */
  private kill(): void {
    const worker = this.worker;
    this.worker = undefined;
    if (worker) void worker.terminate().catch(() => undefined);
    for (const id of [...this.pending.keys()]) this.settle(id, undefined);
  }
}

/**
 * CPU busy share from os.cpus() tick counters since the previous call: the
 * fallback when systeminformation does not answer (a cheap libuv read).
 */
export class CpuMeter {
  private last = CpuMeter.ticks();

  private static ticks(): { busy: number; total: number } {
    let busy = 0;
    let total = 0;
    for (const { times } of cpus()) {
      const all = times.user + times.nice + times.sys + times.irq + times.idle;
      busy += all - times.idle;
      total += all;
    }
    return { busy, total };
  }

  read(): number {
    const now = CpuMeter.ticks();
    const total = now.total - this.last.total;
    const pct = total > 0 ? ((now.busy - this.last.busy) / total) * 100 : 0;
    this.last = now;
    return Math.min(100, Math.max(0, pct));
  }
}
