import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createNotifier, spawnSystemdNotify, watchdogInterval } from '../agent/systemd/sd-notify.js';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { REPO, spawnAgent } from './helpers/child.js';

/*
 * The agent's sd_notify against a stand-in for systemd's notify socket: a
 * Python AF_UNIX SOCK_DGRAM listener (Node cannot receive datagrams on a unix
 * socket either). It reads with recv(), without a control buffer, so the
 * barrier pipe that systemd-notify passes along is closed at once, as systemd
 * closes it after processing.
 */

const LISTENER = `
import json, socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\\0" + name[1:] if name.startswith("@") else name)
print(json.dumps("LISTENING"), flush=True)
while True:
    print(json.dumps(s.recv(65536).decode()), flush=True)
`;

function missingTool(): string | false {
  const missing = ['python3', 'systemd-notify'].filter((tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0);
  if (missing.length === 0) return false;
  const why = `${missing.join(' and ')} not found; apt-get install -y python3 systemd to run the sd_notify tests`;
  if (process.env.CI) throw new Error(`${why} (CI is set, so this is an error)`);
  return why;
}
const skip = missingTool();

interface Received {
  at: number;
  fields: string[];
}

interface FakeSystemd {
  socket: string;
  messages: Received[];
  /** Resolves with the first message (from index `from` on) that has `field`. */
  next(field: string, from?: number, timeoutMs?: number): Promise<Received>;
  close(): void;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function fakeSystemd(socket: string): Promise<FakeSystemd> {
  const proc: ChildProcess = spawn('python3', ['-u', '-c', LISTENER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: Received[] = [];
  const waiters = new Set<() => void>();
  let buffer = '';
  let listening: () => void = () => undefined;
  const up = new Promise<void>((resolve) => (listening = resolve));
  proc.stdout?.on('data', (d: Buffer) => {
    buffer += d.toString();
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const text = JSON.parse(buffer.slice(0, nl)) as string;
      buffer = buffer.slice(nl + 1);
      if (text === 'LISTENING') listening();
      else messages.push({ at: Date.now(), fields: text.split('\n').filter(Boolean) });
      for (const w of waiters) w();
    }
  });
  await up;
  const close = (): void => void proc.kill('SIGKILL');
  cleanups.push(close);
  return {
    socket,
    messages,
    close,
    next(field, from = 0, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = messages.slice(from).find((m) => m.fields.includes(field));
          if (!hit) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no ${field} within ${timeoutMs} ms; got ${JSON.stringify(messages.map((m) => m.fields))}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
  };
}

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const silent = pino({ level: 'silent' });

describe('watchdogInterval', () => {
  it('is half of WATCHDOG_USEC when WATCHDOG_PID is unset or names this process', () => {
    expect(watchdogInterval({ WATCHDOG_USEC: '30000000' }, 42)).toBe(15_000);
    expect(watchdogInterval({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42)).toBe(15_000);
  });

  it('is off when WATCHDOG_PID names another process or WATCHDOG_USEC is unset or bad', () => {
    expect(watchdogInterval({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '41' }, 42)).toBeUndefined();
    expect(watchdogInterval({}, 42)).toBeUndefined();
    expect(watchdogInterval({ WATCHDOG_USEC: '0' }, 42)).toBeUndefined();
    expect(watchdogInterval({ WATCHDOG_USEC: '30s' }, 42)).toBeUndefined();
  });
});

describe('createNotifier without NOTIFY_SOCKET', () => {
  it('sends nothing and never starts keep-alives', async () => {
    const sent: string[][] = [];
    const n = createNotifier({ logger: silent, env: { WATCHDOG_USEC: '1000' }, send: async (_s, f) => void sent.push([...f]) });
    expect(n.enabled).toBe(false);
    expect(n.watchdogIntervalMs).toBeUndefined();
    await n.ready('up');
    await n.start();
    await n.watchdog();
    await n.stopping();
    await new Promise((r) => setTimeout(r, 20));
    await n.stop();
    expect(sent).toEqual([]);
  });
});

describe('createNotifier on process.env', () => {
  it('takes NOTIFY_SOCKET and the watchdog variables out, so other children cannot notify', async () => {
    const saved = { ...process.env };
    try {
      Object.assign(process.env, { NOTIFY_SOCKET: '/run/systemd/notify', WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid) });
      const sent: [string, string[]][] = [];
      const n = createNotifier({ logger: silent, send: async (s, f) => void sent.push([s, [...f]]) });
      expect(process.env.NOTIFY_SOCKET).toBeUndefined();
      expect(process.env.WATCHDOG_USEC).toBeUndefined();
      expect(process.env.WATCHDOG_PID).toBeUndefined();
      expect(n.enabled).toBe(true);
      expect(n.watchdogIntervalMs).toBe(15_000);
      await n.ready();
      expect(sent).toEqual([['/run/systemd/notify', ['READY=1']]]);
    } finally {
      for (const key of ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID']) delete process.env[key];
      Object.assign(process.env, saved);
    }
  });
});

describe.skipIf(skip)('sd_notify through systemd-notify', () => {
  it('delivers READY=1 with a one-line STATUS to a socket path, in order', async () => {
    const dir = await tempDir('edgefleet-notify-');
    const systemd = await fakeSystemd(join(dir, 'notify.sock'));
    const n = createNotifier({ logger: silent, env: { ...process.env, NOTIFY_SOCKET: systemd.socket } });
    expect(n.enabled).toBe(true);
    void n.status('loading models');
    void n.ready('serving 2 models\non 127.0.0.1:8501');
    await n.stopping();
    await n.stop();
    await systemd.next('STOPPING=1');
    const fields = systemd.messages.map((m) => m.fields).filter((f) => !f.includes('BARRIER=1'));
    expect(fields).toEqual([['STATUS=loading models'], ['READY=1', 'STATUS=serving 2 models on 127.0.0.1:8501'], ['STOPPING=1']]);
  });

  it('reaches an abstract socket ("@name")', async () => {
    const systemd = await fakeSystemd(`@edgefleet-test-${randomBytes(6).toString('hex')}`);
    const n = createNotifier({ logger: silent, env: { ...process.env, NOTIFY_SOCKET: systemd.socket } });
    await n.ready();
    expect((await systemd.next('READY=1')).fields).toEqual(['READY=1']);
  });

  it('sends WATCHDOG=1 every half WATCHDOG_USEC from start() until stop()', async () => {
    const dir = await tempDir('edgefleet-notify-');
    const systemd = await fakeSystemd(join(dir, 'notify.sock'));
    const n = createNotifier({ logger: silent, env: { ...process.env, NOTIFY_SOCKET: systemd.socket, WATCHDOG_USEC: '400000' } });
    expect(n.watchdogIntervalMs).toBe(200);
    await n.start();
    await new Promise((r) => setTimeout(r, 1_100));
    await n.stop();
    const count = (): number => systemd.messages.filter((m) => m.fields.includes('WATCHDOG=1')).length;
    const sent = count();
    expect(sent).toBeGreaterThanOrEqual(3);
    expect(sent).toBeLessThanOrEqual(6);
    await new Promise((r) => setTimeout(r, 500));
    expect(count()).toBe(sent);
  });

  it('logs a failure once and never throws when nothing listens', async () => {
    const dir = await tempDir('edgefleet-notify-');
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
    const n = createNotifier({ logger, env: { ...process.env, NOTIFY_SOCKET: join(dir, 'nobody-listens.sock') } });
    await n.ready();
    await n.watchdog();
    const warnings = lines.map((l) => JSON.parse(l)).filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0].msg).toBe('could not notify systemd');
  });

  it('reports a missing systemd-notify as an error of the transport', async () => {
    const send = spawnSystemdNotify(process.env, 'systemd-notify-does-not-exist');
    await expect(send('/nowhere', ['READY=1'])).rejects.toThrow(/ENOENT/);
  });
});

describe.skipIf(skip)('the agent under a fake systemd', () => {
  it('sends READY=1 once the HTTP API is ready, WATCHDOG=1 keep-alives, and STOPPING=1 on SIGTERM', async () => {
    const bin = await readFile(join(REPO, 'agent', 'bin.ts'), 'utf8');
    expect(bin, 'agent/bin.ts must use agent/systemd/sd-notify.ts: READY=1 after agent.start(), STOPPING=1 on SIGTERM').toMatch(/systemd\/sd-notify\.js/);

    const dir = await tempDir('edgefleet-notify-agent-');
    const systemd = await fakeSystemd(join(dir, 'notify.sock'));
    await writeModelTree(join(dir, 'models'), 'mlp', 1, mlpModel());
    // Checked the moment READY=1 arrives: systemd is told "ready" only when the API is.
    // (spawnAgent picks the port and writes it to agent.json before starting the agent.)
    const readyWhenNotified = systemd.next('READY=1', 0, 25_000).then(async () => {
      const { http } = JSON.parse(await readFile(join(dir, 'agent.json'), 'utf8')) as { http: { port: number } };
      const url = `http://127.0.0.1:${http.port}`;
      return Promise.all([`${url}/v2/health/ready`, `${url}/v2/models/mlp/ready`].map((u) => fetch(u).then((r) => r.status)));
    });
    const agent = await spawnAgent(dir, { models: { dir: join(dir, 'models'), settleMs: 0 } }, { ...process.env, NOTIFY_SOCKET: systemd.socket, WATCHDOG_USEC: '600000' });
    cleanups.push(() => void agent.proc.kill('SIGKILL'));

    expect(await readyWhenNotified).toEqual([200, 200]);
    const readyAt = systemd.messages.findIndex((m) => m.fields.includes('READY=1'));
    expect(systemd.messages.slice(0, readyAt).some((m) => m.fields.includes('STOPPING=1'))).toBe(false);

    // Keep-alives every 300 ms (half of WATCHDOG_USEC).
    const first = await systemd.next('WATCHDOG=1', readyAt);
    const third = await systemd.next('WATCHDOG=1', systemd.messages.indexOf(first) + 1).then((m) => systemd.next('WATCHDOG=1', systemd.messages.indexOf(m) + 1));
    expect(third.at - first.at).toBeGreaterThanOrEqual(400);
    expect(third.at - first.at).toBeLessThan(3_000);

    const before = systemd.messages.length;
    agent.proc.kill('SIGTERM');
    await systemd.next('STOPPING=1', before);
    expect(await agent.exited).toEqual({ code: 0, signal: null });
  });
});
