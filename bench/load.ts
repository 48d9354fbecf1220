/**
 * A closed-loop HTTP load generator: N clients, each sending its next request
 * as soon as the previous answer has been read, each over its own keep-alive
 * connection (bench/raw-http.ts: pre-encoded requests on a bare socket, a few
 * µs of CPU per request, so one generator core outruns the servers measured). A warm-up period runs
 * first (same clients, not recorded). Then either a fixed duration, cut into
 * `windows` equal windows reported separately (so a window disturbed by
 * another job on a shared machine can be told apart), or a fixed request count.
 * A request counts in the window its answer arrived in, and only if it was
 * sent after the warm-up; requests still in flight at the end are not counted.
 */
import http from 'node:http';
import { RawConnection, encodeRequest } from './raw-http.js';

export interface LoadRequest {
  body: Buffer;
  headers: http.OutgoingHttpHeaders;
}

export interface LoadOptions {
  port: number;
  host?: string;
  path: string;
  /** Bodies to send, rotated through by every client. */
  requests: readonly LoadRequest[];
  concurrency: number;
  warmupMs: number;
  /** Measure for `windows` x `windowMs`... */
  windowMs?: number;
  windows?: number;
  /** ...or until this many requests have completed after the warm-up (one window). */
  count?: number;
  timeoutMs?: number;
  /** Count mode gives up after this long (default 120 s). */
  maxDurationMs?: number;
  /** Called at each window boundary (0 = end of warm-up, k = end of window k). */
  onBoundary?: (index: number) => void;
}

export interface Stats {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  max: number;
}

export interface WindowResult extends Stats {
  ok: number;
  errors: number;
  elapsedS: number;
  rps: number;
  /** CPU the load generator itself used in the window, in % of one core. */
  genCpuPct: number;
}

export interface LoadResult {
  concurrency: number;
  windows: WindowResult[];
  /** All windows together. */
  total: WindowResult;
  /** A few distinct error descriptions, for the report. */
  errorSamples: string[];
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] as number;
}

export function summarize(latencies: readonly number[]): Stats {
  const sorted = Float64Array.from(latencies).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), mean: sorted.length ? sum / sorted.length : NaN, max: sorted[sorted.length - 1] ?? NaN };
}

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One POST over `agent`; resolves with the whole response (or rejects on a socket error or timeout). */
export function post(agent: http.Agent | undefined, host: string, port: number, path: string, req: LoadRequest, timeoutMs: number, keepBody: boolean): Promise<Response> {
  return new Promise((resolve, reject) => {
    const r = http.request({ agent, host, port, path, method: 'POST', headers: req.headers, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        if (keepBody) chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: keepBody ? Buffer.concat(chunks) : Buffer.alloc(0) }));
      res.on('error', reject);
    });
    r.on('timeout', () => r.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    r.on('error', reject);
    r.end(req.body);
  });
}

function plainHeaders(headers: http.OutgoingHttpHeaders): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

const cpuSeconds = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const host = opts.host ?? '127.0.0.1';
  const timeoutMs = opts.timeoutMs ?? 30_000;
  if (opts.requests.length === 0) throw new Error('runLoad: no requests');
  const byCount = opts.windowMs === undefined;
  if (byCount && opts.count === undefined) throw new Error('runLoad: give windowMs or count');
  const nWindows = byCount ? 1 : Math.max(1, opts.windows ?? 1);
  const windowMs = opts.windowMs ?? Infinity;
  const encoded = opts.requests.map((r) => encodeRequest(host, opts.port, { path: opts.path, headers: plainHeaders(r.headers), body: r.body }));
  const connections: RawConnection[] = [];
  const latencies: number[][] = Array.from({ length: nWindows }, () => []);
  const errors = new Array<number>(nWindows).fill(0);
  const errorSamples = new Set<string>();
  let next = 0;
  let done = false;
  const t0 = performance.now();
  const from = t0 + opts.warmupMs;
  // Count mode still stops after maxDurationMs, so a failing server cannot hang the run.
  const until = byCount ? from + (opts.maxDurationMs ?? 120_000) : from + nWindows * windowMs;

  // Boundary bookkeeping: actual times and generator CPU at each boundary.
  const boundaryAt: number[] = [];
  const boundaryCpu: number[] = [];
  const timers: NodeJS.Timeout[] = [];
  const mark = (i: number): void => {
    boundaryAt[i] = performance.now();
    boundaryCpu[i] = cpuSeconds();
    opts.onBoundary?.(i);
  };
  const boundaries = byCount ? 1 : nWindows + 1; // count mode marks its end itself
  for (let i = 0; i < boundaries; i++) timers.push(setTimeout(() => mark(i), Math.max(0, from + (i === 0 ? 0 : i * windowMs) - performance.now())));

  const client = async (): Promise<void> => {
    const connection = new RawConnection(host, opts.port, timeoutMs);
    connections.push(connection);
    while (!done) {
      const req = encoded[next++ % encoded.length] as Buffer;
      const start = performance.now();
      if (start >= until) break;
      let status = 0;
      let failure: string | undefined;
      try {
        status = await connection.send(req);
        if (status !== 200) failure = `HTTP ${status}`;
      } catch (err) {
        failure = (err as Error).message;
      }
      const end = performance.now();
      if (done || start < from || end >= until) continue;
      const w = byCount ? 0 : Math.min(nWindows - 1, Math.floor((end - from) / windowMs));
      if (failure !== undefined) {
        errors[w] = (errors[w] ?? 0) + 1;
        if (errorSamples.size < 5) errorSamples.add(failure);
        if (status === 0) await new Promise((r) => setTimeout(r, 5)); // a dead server must not spin the loop
      } else {
        (latencies[w] as number[]).push(end - start);
        if (byCount && (latencies[0] as number[]).length >= (opts.count as number)) {
          done = true;
          mark(1);
        }
      }
    }
  };

  await Promise.all(Array.from({ length: opts.concurrency }, () => client()));
  for (const t of timers) clearTimeout(t);
  for (const c of connections) c.close();
  // The last boundary timer may not have run yet when the last client returns.
  for (let i = 0; i <= nWindows; i++) if (boundaryAt[i] === undefined) mark(i);
  const windows = latencies.map((lat, w): WindowResult => {
    const elapsedS = ((boundaryAt[w + 1] as number) - (boundaryAt[w] as number)) / 1000;
    const cpu = (boundaryCpu[w + 1] as number) - (boundaryCpu[w] as number);
    return { ok: lat.length, errors: errors[w] ?? 0, elapsedS, rps: lat.length / elapsedS, genCpuPct: (cpu / elapsedS) * 100, ...summarize(lat) };
  });
  const all = latencies.flat();
  const elapsedS = ((boundaryAt[nWindows] as number) - (boundaryAt[0] as number)) / 1000;
  const total: WindowResult = {
    ok: all.length, errors: errors.reduce((a, b) => a + b, 0), elapsedS, rps: all.length / elapsedS,
    genCpuPct: (((boundaryCpu[nWindows] as number) - (boundaryCpu[0] as number)) / elapsedS) * 100, ...summarize(all),
  };
  return { concurrency: opts.concurrency, windows, total, errorSamples: [...errorSamples] };
}
