/**
 * `npm start` headless: the demo as a child process (embedded aedes broker,
 * fleet commands, collector, agent) in a temp folder. The printed prediction
 * must be the digit's true label, the printed curl must work against the
 * running agent from any directory (its request file is an absolute path), `edgefleet status` must show the device serving, and
 * SIGINT must stop everything with exit status 0.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shellWord } from '../demo/util.js';
import { devices } from '../fleet/commands/devices.js';
import { REPO, freePort } from './helpers/child.js';

const run = promisify(execFile);

interface Demo {
  proc: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  httpPort: number;
}

/** tsx's loader by absolute URL, so the demo can run with a working directory outside the repository. */
const TSX = pathToFileURL(createRequire(join(REPO, 'package.json')).resolve('tsx')).href;

/**
 * Runs in `dir` with the demo's files in `dir/demo` (a relative EDGEFLEET_DEMO_DIR), as a user who
 * runs `npm start` in their own folder: paths printed relative to that folder would break elsewhere.
 */
async function startDemo(dir: string, args: string[] = []): Promise<Demo> {
  const httpPort = await freePort();
  const env = { ...process.env, EDGEFLEET_DEMO_DIR: 'demo', EDGEFLEET_HTTP_PORT: String(httpPort), EDGEFLEET_DEMO_MQTT_PORT: '0', EDGEFLEET_DEMO_DASHBOARD_PORT: '0' };
  const proc = spawn(process.execPath, ['--import', TSX, join(REPO, 'demo', 'start.ts'), ...args], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return { proc, output: () => out, exited, httpPort };
}

async function waitForOutput(demo: Demo, text: string, timeoutMs: number): Promise<string> {
  const until = Date.now() + timeoutMs;
  while (!demo.output().includes(text)) {
    if (demo.proc.exitCode !== null) throw new Error(`demo exited early (${demo.proc.exitCode}):\n${demo.output()}`);
    if (Date.now() > until) throw new Error(`demo did not print "${text}" within ${timeoutMs / 1000} s:\n${demo.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return demo.output();
}

const argmax = (xs: readonly number[]): number => xs.indexOf(Math.max(...xs));

describe('npm start (demo/start.ts)', () => {
  let dir: string;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-demo-'));
  });
  afterAll(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('publishes, deploys and serves MNIST over the embedded broker; the printed curl works; SIGINT exits 0', async () => {
    const demo = await startDemo(dir);
    children.push(demo.proc);
    const out = await waitForOutput(demo, 'Ctrl-C stops', 75_000);

    const answer = /^Answer: class (\d) \(probability [\d.]+\); true label (\d)$/m.exec(out);
    expect(answer, out).not.toBeNull();
    expect(answer?.[1]).toBe(answer?.[2]);

    // The curl as printed, against the running agent, from a directory that is neither the repository nor the demo's.
    const [, curl, requestFile] = /^ {2}(curl -s -X POST \S+ -d @(\S+))$/m.exec(out) ?? [];
    expect(curl, out).toContain(`http://127.0.0.1:${demo.httpPort}/v1/models/mnist:predict`);
    expect(isAbsolute(requestFile as string), `the request file should be an absolute path: ${requestFile}`).toBe(true);
    expect(existsSync(requestFile as string), `the request file should exist: ${requestFile}`).toBe(true);
    expect(requestFile).toBe(join(realpathSync(dir), 'demo', 'digit-7.json'));
    const elsewhere = tmpdir();
    const body = existsSync('/usr/bin/curl') || existsSync('/bin/curl')
      ? (await run('sh', ['-c', curl as string], { cwd: elsewhere })).stdout
      : await fetchLike(curl as string);
    const predictions = (JSON.parse(body) as { predictions: number[][] }).predictions;
    expect(argmax(predictions[0] ?? [])).toBe(Number(answer?.[2]));

    // edgefleet status, as printed: the device online, serving the model, with telemetry.
    const row = out.split('\n').find((l) => l.trimStart().startsWith('demo-pi'));
    expect(row, out).toMatch(/demo-pi\s+yes\s+-\s+1 applied\s+mnist:1 serving\s+\d/);

    // The fleet tools speak MQTT 3.1.1 to the same broker.
    const broker = /devices\s+npx tsx fleet\/bin\.ts devices --broker (\S+) --mqtt-version 4/.exec(out)?.[1];
    const lines: string[] = [];
    await devices.run(['--broker', broker as string, '--mqtt-version', '4', '--wait-ms', '300'], { out: (l) => lines.push(l), note: () => undefined, stderr: process.stderr, cwd: REPO });
    expect(lines.join('\n')).toMatch(/demo-pi/);

    // Collector delivery: the collector's retained ack reached the device, which deleted what it covers.
    const acked = await ackedUpTo(join(dir, 'demo', 'device', 'agent.db'), 20_000);
    expect(acked.upTo, 'the device never received a telemetry ack').toBeGreaterThan(0);
    expect(acked.oldestWaiting ?? Infinity).toBeGreaterThan(acked.upTo);

    demo.proc.kill('SIGINT');
    expect(await demo.exited).toEqual({ code: 0, signal: null });
    expect(demo.output()).toContain('Stopped.');
    expect(demo.output()).not.toMatch(/demo failed|stopping the .* failed/);
  }, 90_000);

  it('--once exits 0 by itself after printing, reusing the trained model', async () => {
    const demo = await startDemo(dir, ['--once']);
    children.push(demo.proc);
    const { code } = await demo.exited;
    expect(code, demo.output()).toBe(0);
    expect(demo.output()).toContain('(cached)');
    expect(demo.output()).toMatch(/^Answer: class 7 .*; true label 7$/m);
    expect(demo.output()).toContain('Stopped (--once).');
  }, 60_000);
});

describe('shellWord', () => {
  it('leaves plain paths alone and single-quotes the rest', () => {
    expect(shellWord('@/tmp/edgefleet-demo-x/digit-7.json')).toBe('@/tmp/edgefleet-demo-x/digit-7.json');
    expect(shellWord("@/home/me/my demo/it's.json")).toBe(`'@/home/me/my demo/it'\\''s.json'`);
  });
});

/** The highest telemetry ack the running agent kept, and its oldest point still waiting, once an ack has come (or the time is up). */
async function ackedUpTo(file: string, timeoutMs: number): Promise<{ upTo: number; oldestWaiting: number | null }> {
  const until = Date.now() + timeoutMs;
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    for (;;) {
      const upTo = (db.prepare('SELECT acked_up_to AS upTo FROM telemetry_state WHERE id = 1').get() as { upTo: number }).upTo;
      if (upTo > 0 || Date.now() > until) {
        const oldestWaiting = (db.prepare('SELECT MIN(seq) AS seq FROM telemetry_outbox').get() as { seq: number | null }).seq;
        return { upTo, oldestWaiting };
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    db.close();
  }
}

/** Without a curl binary: the same request with fetch. */
async function fetchLike(curl: string): Promise<string> {
  const [, url, file] = /POST (\S+) -d @(\S+)/.exec(curl) ?? [];
  const { readFile } = await import('node:fs/promises');
  const res = await fetch(url as string, { method: 'POST', body: await readFile(file as string) });
  return res.text();
}
