import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { parseConfig } from '../agent/config/load.js';
import { configSchema } from '../agent/config/schema.js';
import { HttpServer } from '../agent/http/server.js';
import { ModelRegistry } from '../agent/serving/registry.js';
import { Metrics } from '../agent/telemetry/metrics.js';
import { waitFor } from './helpers/agent.js';
import { REPO, freePort } from './helpers/child.js';

/**
 * http.maxConnections against floods of idle and slowloris connections
 * (docs/http-api.md): real clients keep being served, quickly, while the
 * server never holds more connections than the cap. In process, where the
 * server's own count can be read, and as a real agent process under a low
 * descriptor limit, the way systemd's LimitNOFILE bounds it.
 */

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quantile = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))] ?? NaN;

const sockets: Socket[] = [];
const timers: NodeJS.Timeout[] = [];
let server: HttpServer | undefined;
let child: ChildProcess | undefined;
let dir: string | undefined;

afterEach(async () => {
  for (const t of timers.splice(0)) clearInterval(t);
  for (const s of sockets.splice(0)) s.destroy();
  await server?.stop();
  server = undefined;
  if (child && child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  child = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function startServer(maxConnections: number): Promise<{ port: number; logged: string[] }> {
  const logged: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (line: string) => logged.push(line) });
  const config = parseConfig({ deviceId: 'd', stateDir: '/tmp/unused', http: { port: 0, host: '127.0.0.1', maxConnections } });
  server = new HttpServer({ config: config.http, registry: new ModelRegistry(), metrics: new Metrics({ processMetrics: false }), logger, agentVersion: 'test', isReady: () => true });
  const address = await server.start();
  return { port: address.port, logged };
}

/** Opens `n` connections, `batch` at a time, that never send a byte. Evicted ones simply close. */
async function idleFlood(port: number, n: number, batch = 200): Promise<void> {
  for (let i = 0; i < n; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, n - i) }, () => {
        const s = connect(port, '127.0.0.1');
        sockets.push(s);
        s.on('error', () => undefined);
        return new Promise<void>((resolve) => {
          s.once('connect', () => resolve());
          s.once('close', () => resolve());
        });
      }),
    );
  }
}

/** `n` slowloris connections: a request head sent one byte every `everyMs`, never finished. */
async function slowloris(port: number, n: number, everyMs = 100): Promise<void> {
  const head = Buffer.from('POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n' + 'X-Pad: '.padEnd(8000, 'a'));
  const conns = await Promise.all(
    Array.from({ length: n }, async () => {
      const s = connect(port, '127.0.0.1');
      sockets.push(s);
      s.on('error', () => undefined);
      await once(s, 'connect');
      return { s, at: 0 };
    }),
  );
  for (const c of conns) c.s.write(head.subarray(0, ++c.at));
  timers.push(
    setInterval(() => {
      for (const c of conns) if (!c.s.destroyed && c.at < head.length) c.s.write(head.subarray(c.at, ++c.at));
    }, everyMs),
  );
}

/** One request on a fresh connection (a new client), answered or failed, with its latency. */
function request(port: number, path = '/v2/health/live'): Promise<{ status: number | string; ms: number }> {
  const started = performance.now();
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let text = '';
    const done = (status: number | string): void => {
      s.destroy();
      resolve({ status, ms: performance.now() - started });
    };
    s.setTimeout(5_000, () => done('timeout'));
    s.on('error', (err) => done(err.message));
    s.on('data', (d: Buffer) => (text += d.toString('latin1')));
    s.on('end', () => done(Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? NaN) || `no answer: ${JSON.stringify(text.slice(0, 80))}`));
    s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });
}

/** Real clients, one after another every `everyMs`, until `until` resolves. */
async function realClients(port: number, until: Promise<unknown>, everyMs = 20): Promise<{ status: number | string; ms: number }[]> {
  const results: { status: number | string; ms: number }[] = [];
  let stop = false;
  void until.then(() => (stop = true));
  while (!stop || results.length < 20) {
    results.push(await request(port));
    await sleep(everyMs);
  }
  return results;
}

const summary = (rs: { status: number | string; ms: number }[]): string =>
  `${rs.length} requests, ${rs.filter((r) => r.status === 200).length} ok, p50 ${quantile(rs.map((r) => r.ms), 0.5).toFixed(1)} ms, max ${Math.max(...rs.map((r) => r.ms)).toFixed(1)} ms`;

describe('http.maxConnections, in process', () => {
  it('2,000 idle and 40 slowloris connections: every real client is served quickly, never more than the cap open', async () => {
    const CAP = 64;
    const { port, logged } = await startServer(CAP);
    let sampledMax = 0;
    timers.push(setInterval(() => (sampledMax = Math.max(sampledMax, server?.connections.open ?? 0)), 2));

    await slowloris(port, 40);
    await idleFlood(port, 1000);
    // A second wave of 1,000 while real clients come and go.
    const wave = idleFlood(port, 1000, 100);
    const during = await realClients(port, wave);
    console.log(`in process, cap ${CAP}: ${summary(during)}; server peak ${server?.connections.peak} connections`);

    expect(during.filter((r) => r.status !== 200)).toEqual([]);
    expect(quantile(during.map((r) => r.ms), 0.5)).toBeLessThan(50);
    expect(Math.max(...during.map((r) => r.ms))).toBeLessThan(1_000);
    expect(server?.connections.peak).toBeLessThanOrEqual(CAP);
    expect(sampledMax).toBe(CAP);
    // The flood filled the server to the cap, not past it. A real client's slot
    // freed after the wave stays free until someone connects: one more idle
    // connection takes it (or evicts the oldest), and the count is the cap again.
    await idleFlood(port, 1);
    await waitFor(() => server?.connections.open === CAP, 2_000, `open connections back at ${CAP} (now ${server?.connections.open})`);
    // One warning, not one per connection.
    const warnings = logged.filter((l) => l.includes('http.maxConnections'));
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(warnings[0] as string)).toMatchObject({ maxConnections: CAP });
  }, 60_000);

  it('at the cap with only slowloris connections, a new client evicts the oldest of them', async () => {
    const { port } = await startServer(8);
    await slowloris(port, 8);
    await sleep(50);
    expect(server?.connections.open).toBe(8);
    expect((await request(port)).status).toBe(200);
    expect(server?.connections.peak).toBe(8);
  });

  it('when every connection has a request in progress, a new one gets 503 at once and the count stays at the cap', async () => {
    const { port } = await startServer(4);
    for (let i = 0; i < 4; i++) {
      const s = connect(port, '127.0.0.1');
      sockets.push(s);
      await once(s, 'connect');
      s.write('POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{'); // a body still arriving
    }
    await sleep(50);
    const started = performance.now();
    const s = connect(port, '127.0.0.1');
    sockets.push(s);
    let text = '';
    s.on('data', (d: Buffer) => (text += d.toString()));
    await Promise.race([once(s, 'end'), sleep(2_000)]);
    expect(performance.now() - started).toBeLessThan(500);
    expect(text).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(text).toContain('Retry-After: 1');
    expect(text).toContain('http.maxConnections');
    expect(server?.connections).toEqual({ open: 4, peak: 4 });
  });
});

/** Sockets the process holds open, from /proc/{pid}/fd. */
async function socketCount(pid: number): Promise<number> {
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => []);
  const links = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
  return links.filter((l) => l.startsWith('socket:')).length;
}

describe.skipIf(process.platform !== 'linux')('http.maxConnections, a real agent under a descriptor limit', () => {
  it('2,000 idle and 40 slowloris connections cannot use up its 256 descriptors: every real client is served', async () => {
    const CAP = 128;
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-conn-'));
    const port = await freePort();
    const file = join(dir, 'agent.json');
    await writeFile(file, JSON.stringify({ deviceId: 'conn', stateDir: join(dir, 'state'), http: { port, maxConnections: CAP }, runtime: { executionProviders: ['cpu'] } }));
    // As LimitNOFILE= does; the agent cannot raise it (systemd's unit forbids setrlimit, here the hard limit does).
    child = spawn('bash', ['-c', `ulimit -n 256 && exec "${process.execPath}" --import tsx agent/bin.ts --config "${file}"`], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const until = Date.now() + 20_000;
    while ((await request(port, '/v2/health/ready')).status !== 200) {
      if (child.exitCode !== null || Date.now() > until) throw new Error(`agent did not start:\n${out}`);
      await sleep(100);
    }
    const pid = child.pid as number;
    const baseline = await socketCount(pid);
    let sampledMax = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        sampledMax = Math.max(sampledMax, await socketCount(pid));
        await sleep(5);
      }
    })();

    await slowloris(port, 40, 200);
    await idleFlood(port, 1000);
    const during = await realClients(port, idleFlood(port, 1000, 100));
    sampling = false;
    await sampler;
    console.log(`agent process, cap ${CAP}, 256 descriptors: ${summary(during)}; sockets: ${baseline} before, at most ${sampledMax} during`);

    expect(during.filter((r) => r.status !== 200)).toEqual([]);
    expect(Math.max(...during.map((r) => r.ms))).toBeLessThan(1_000);
    // The cap, plus sockets being refused (none here) or closing, plus what it held before.
    expect(sampledMax).toBeLessThanOrEqual(baseline + CAP + 8);
    expect(out).toContain('HTTP connections at http.maxConnections');
    // 128 + 200 for the rest is above 256: the agent says so at start.
    expect(out).toContain('raise LimitNOFILE or lower http.maxConnections');
  }, 90_000);
});

describe('systemd/edgefleet-agent.service', () => {
  it("sets a LimitNOFILE with room for the default http.maxConnections and the agent's other descriptors", () => {
    const unit = readFileSync(join(REPO, 'systemd', 'edgefleet-agent.service'), 'utf8');
    const limit = Number(/^LimitNOFILE=(\d+)$/m.exec(unit)?.[1]);
    const { maxConnections } = configSchema.parse({ deviceId: 'd' }).http;
    expect(limit).toBeGreaterThanOrEqual(maxConnections + 200);
  });
});
