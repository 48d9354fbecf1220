import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { spawnAgent } from './helpers/child.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('SIGTERM', () => {
  it('stops taking requests, finishes the one in flight and exits 0 within 10 s', async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-sigterm-'));
    await writeModelTree(join(dir, 'models'), 'mlp', 1, mlpModel());
    const agent = await spawnAgent(dir, { models: { dir: join(dir, 'models'), settleMs: 0 } });
    const port = Number(new URL(agent.url).port);

    // A request in flight: headers and half the body sent, the rest after the signal.
    const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 784], datatype: 'FP32', data: new Array(784).fill(0.5) }] });
    const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/v2/models/mlp/infer', headers: { 'content-length': Buffer.byteLength(body) } }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      });
      req.on('error', reject);
      req.write(body.slice(0, 100));
      setTimeout(() => {
        agent.proc.kill('SIGTERM');
        setTimeout(() => req.end(body.slice(100)), 300);
      }, 200);
    });

    const started = Date.now();
    const res = await response;
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body).outputs[0].shape).toEqual([1, 10]);
    const exit = await agent.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(10_000);
    // After the signal, new connections are refused.
    await expect(fetch(`${agent.url}/v2/health/live`)).rejects.toThrow();
    expect(agent.output()).toMatch(/"msg":"edgefleet agent stopped"/);
  });

  it('rejects a bad config with one line per problem and exit code 2', async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-badcfg-'));
    const agent = spawnAgent(dir, { deviceId: 'bad id!', http: { port: 70000 }, bogus: true });
    await expect(agent).rejects.toThrow(/exited early \(2\)[\s\S]*deviceId: must match[\s\S]*(http\.port|bogus)[\s\S]*(http\.port|bogus)/);
  });
});
