/** Knobs shared by every benchmark module, from the environment. */
export interface BenchSettings {
  /** BENCH_QUICK=1: a ~1 minute smoke run with short windows. */
  quick: boolean;
  /** ONNX Runtime intra-op threads for the agent, the baseline and bare runs alike (BENCH_THREADS, default 1). */
  threads: number;
  /**
   * Pin servers to one CPU and the load generator (and in-process runs) to
   * another with taskset (BENCH_PIN=0 turns it off). Undefined when not pinning.
   */
  pin: { client: number; server: number } | undefined;
}

export function benchSettings(env: NodeJS.ProcessEnv = process.env): BenchSettings {
  const quick = env.BENCH_QUICK === '1' || env.BENCH_QUICK === 'true';
  const threads = env.BENCH_THREADS ? Number(env.BENCH_THREADS) : 1;
  if (!Number.isInteger(threads) || threads < 0) throw new Error(`BENCH_THREADS must be a non-negative integer, got ${env.BENCH_THREADS}`);
  const pinOff = env.BENCH_PIN === '0' || env.BENCH_PIN === 'false';
  return { quick, threads, pin: pinOff ? undefined : { client: 0, server: 1 } };
}
