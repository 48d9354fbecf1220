import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { parseConfig } from '../../agent/config/load.js';
import type { AgentConfigInput } from '../../agent/config/schema.js';
import { createAgent, type Agent } from '../../agent/main.js';

export interface TestAgent {
  agent: Agent;
  url: string;
  dir: string;
  modelsDir: string;
  close(): Promise<void>;
}

/**
 * Starts a real agent in-process on a free port, with its own temp state and
 * models dirs. Logs go nowhere (TEST_LOG_LEVEL to see them) unless `logger` is given.
 */
export async function startTestAgent(
  overrides: Partial<AgentConfigInput> = {},
  prepare?: (modelsDir: string) => Promise<void>,
  logger: Logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
): Promise<TestAgent> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-test-'));
  const modelsDir = join(dir, 'models');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(modelsDir, { recursive: true });
  await prepare?.(modelsDir);
  const config = parseConfig({
    deviceId: 'test-device',
    stateDir: join(dir, 'state'),
    ...overrides,
    http: { port: 0, ...overrides.http },
    models: { dir: modelsDir, pollIntervalMs: 100, settleMs: 0, ...overrides.models },
    runtime: { executionProviders: ['cpu'], warmupRuns: 1, intraOpNumThreads: 1, ...overrides.runtime },
  });
  const agent = createAgent(config, logger);
  await agent.start();
  const address = agent.httpAddress;
  if (!address) throw new Error('agent did not listen');
  return {
    agent,
    url: `http://127.0.0.1:${address.port}`,
    dir,
    modelsDir,
    async close() {
      await agent.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function postJson(url: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: res.status, json: await res.json() };
}

export async function getJson(url: string): Promise<{ status: number; json: any }> {
  const res = await fetch(url);
  return { status: res.status, json: await res.json() };
}

/** Polls until `check` returns a truthy value or the time runs out. */
export async function waitFor<T>(check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
