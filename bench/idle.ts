/**
 * How the machine's CPUs idle, and guest halt polling for the latency rows.
 *
 * A one-client closed loop leaves both cores idle for most of every call: the
 * server's while the client works, the client's while the server works. On a
 * KVM guest whose cpuidle driver is `haltpoll` and whose
 * `guest_halt_poll_ns` is 0 (this bench machine as found), each of those idle
 * spells is a HLT that exits to the hypervisor, and each wake-up re-enters the
 * guest on cold caches: tens of microseconds per call that a board running on
 * bare metal (a Raspberry Pi's WFI) does not pay, and that bare
 * `session.run` back to back never pays. With guest halt polling, the kernel
 * spins up to `guest_halt_poll_ns` before halting, as most cloud images ship it.
 * The grpc benchmark runs its MLP latency rows both ways; the setting is put
 * back when they end, and on any exit.
 */
import { readFileSync, writeFileSync } from 'node:fs';

const DRIVER = '/sys/devices/system/cpu/cpuidle/current_driver';
const POLL_NS = '/sys/module/haltpoll/parameters/guest_halt_poll_ns';

export interface IdleState {
  /** The cpuidle driver (haltpoll, intel_idle, acpi_idle, ...); undefined where the kernel does not say. */
  driver: string | undefined;
  /** guest_halt_poll_ns, where the haltpoll driver runs. */
  haltPollNs: number | undefined;
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export function idleState(): IdleState {
  const driver = read(DRIVER);
  const ns = driver === 'haltpoll' ? read(POLL_NS) : undefined;
  return { driver, haltPollNs: ns === undefined ? undefined : Number(ns) };
}

/** One line for a benchmark's header. */
export function describeIdle(state = idleState()): string {
  if (state.driver === undefined) return 'cpuidle: unknown';
  if (state.haltPollNs === undefined) return `cpuidle: ${state.driver}`;
  const polling = state.haltPollNs === 0 ? 'off: an idle vCPU halts and exits to the hypervisor at once' : `spins up to ${state.haltPollNs / 1000} µs before halting`;
  return `cpuidle: haltpoll (KVM guest), guest halt polling ${polling}`;
}

/**
 * Runs `body` with guest halt polling at `ns`, then puts the old value back.
 * Undefined, `body` not run, where the haltpoll driver is absent, polling is
 * already on, the file is not writable (not root), or BENCH_HALTPOLL=0.
 */
export async function withHaltPolling<T>(ns: number, body: () => Promise<T>, env: NodeJS.ProcessEnv = process.env): Promise<T | undefined> {
  if (env.BENCH_HALTPOLL === '0' || env.BENCH_HALTPOLL === 'false') return undefined;
  const before = idleState().haltPollNs;
  if (before !== 0) return undefined;
  try {
    writeFileSync(POLL_NS, String(ns));
  } catch {
    return undefined;
  }
  const restore = (): void => {
    try {
      writeFileSync(POLL_NS, String(before));
    } catch {
      // nothing more to do: the next boot resets it
    }
  };
  // Interrupted mid-run (bench/child.ts turns SIGINT and SIGTERM into exit), the machine still gets its setting back.
  process.once('exit', restore);
  try {
    return await body();
  } finally {
    restore();
    process.removeListener('exit', restore);
  }
}
