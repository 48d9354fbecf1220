/**
 * CPU accounting from /proc, to tell how much of the machine something outside
 * the benchmark used during a measurement (other jobs on a shared box). Linux
 * only; elsewhere every reading is NaN and nothing is filtered.
 */
import { readFileSync } from 'node:fs';

const TICKS_PER_S = 100; // USER_HZ

/** Seconds of CPU the whole machine spent busy (user, nice, system, steal) since boot. */
export function machineBusySeconds(): number {
  try {
    const first = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const f = first.trim().split(/\s+/).slice(1).map(Number);
    // cpu user nice system idle iowait irq softirq steal ...; irq/softirq are left out
    // because the loopback traffic of the benchmark itself is accounted there.
    return ((f[0] ?? NaN) + (f[1] ?? NaN) + (f[2] ?? NaN) + (f[7] ?? 0)) / TICKS_PER_S;
  } catch {
    return NaN;
  }
}

/** CPU seconds (user + system, all threads) a process has used; NaN when it cannot be read. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_S;
  } catch {
    return NaN;
  }
}

export function ownCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

export interface CpuSample {
  at: number;
  machine: number;
  own: number;
  server: number;
}

export function sampleCpu(serverPid: number | undefined): CpuSample {
  return { at: performance.now(), machine: machineBusySeconds(), own: ownCpuSeconds(), server: serverPid === undefined ? 0 : processCpuSeconds(serverPid) };
}

export interface CpuSplit {
  /** Percent of one core, over the interval. */
  own: number;
  server: number;
  /** Everything else on the machine: other people's jobs. */
  other: number;
}

export function cpuBetween(a: CpuSample, b: CpuSample): CpuSplit {
  const s = (b.at - a.at) / 1000;
  const own = b.own - a.own;
  const server = b.server - a.server;
  const other = Math.max(0, b.machine - a.machine - own - server);
  return { own: (own / s) * 100, server: (server / s) * 100, other: (other / s) * 100 };
}

/**
 * Waits (up to `maxWaitMs`) until the rest of the machine has used less than
 * `thresholdPct` of one core over two consecutive `stepMs` intervals, so a
 * measurement does not start in the middle of someone else's burst. Returns
 * the last reading of that other load.
 */
export async function waitForQuiet(maxWaitMs: number, thresholdPct = 15, stepMs = 250, serverPid?: number): Promise<number> {
  const until = performance.now() + maxWaitMs;
  let prev = sampleCpu(serverPid);
  let quiet = 0;
  let last = NaN;
  while (performance.now() < until) {
    await new Promise((r) => setTimeout(r, stepMs));
    const now = sampleCpu(serverPid);
    last = cpuBetween(prev, now).other;
    prev = now;
    if (Number.isNaN(last)) return last;
    quiet = last < thresholdPct ? quiet + 1 : 0;
    if (quiet >= 2) break;
  }
  return last;
}
