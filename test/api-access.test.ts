/**
 * TLS and bearer tokens on the local APIs (config `api`), with real clients:
 * curl for HTTPS, Python's grpcio for gRPC over TLS, and the agent's own
 * entry point for SIGHUP. Refusals say 401 / UNAUTHENTICATED and nothing more.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';
import { spawnAgent } from './helpers/child.js';
import { pythonClient, pythonGrpc, pythonGrpcSkipReason, type PythonClient } from './helpers/python-grpc.js';

const run = promisify(execFile);
const digest = (token: string): string => `sha256:${createHash('sha256').update(token).digest('hex')}`;

/** A self-signed certificate for localhost and 127.0.0.1 (it is its own CA for the clients). */
async function certificate(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '2',
    '-subj', `/CN=${name}`, '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
  return { cert, key };
}

interface CurlResult { status: number; body: string; headers: string; error?: string }

/** curl over HTTPS, trusting `ca`; a TLS failure comes back as `error`. */
async function curl(port: number, path: string, ca: string, token?: string): Promise<CurlResult> {
  const args = ['-sS', '--resolve', `localhost:${port}:127.0.0.1`, '--cacert', ca, '-D', '-', '-o', '-', '-w', '\n%{http_code}'];
  if (token) args.push('-H', `Authorization: Bearer ${token}`);
  try {
    const { stdout } = await run('curl', [...args, `https://localhost:${port}${path}`]);
    const lines = stdout.trimEnd().split('\n');
    const status = Number(lines.pop());
    const text = lines.join('\n');
    const split = text.indexOf('\r\n\r\n');
    return { status, headers: text.slice(0, split), body: text.slice(split + 4) };
  } catch (err) {
    return { status: 0, body: '', headers: '', error: (err as { stderr?: string }).stderr ?? String(err) };
  }
}

const skip = pythonGrpcSkipReason();

describe.skipIf(skip)('TLS and bearer tokens on HTTP and gRPC', () => {
  let dir: string;
  let t: TestAgent;
  let py: PythonClient;
  let first: { cert: string; key: string };
  let second: { cert: string; key: string };
  let live: { cert: string; key: string };
  let tokens: string;
  let httpPort: number;
  let grpcTarget: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-access-'));
    [first, second] = await Promise.all([certificate(dir, 'first'), certificate(dir, 'second')]);
    // The agent reads the files the config names; a renewal replaces their contents.
    live = { cert: join(dir, 'live.pem'), key: join(dir, 'live.key') };
    await run('cp', [first.cert, live.cert]);
    await run('cp', [first.key, live.key]);
    tokens = join(dir, 'tokens');
    await writeFile(tokens, `# operators\n${digest('token-one')}  ci\n\n${digest('token-two')}\n`);
    py = await pythonClient(pythonGrpc() as string);
    t = await startTestAgent({ api: { tls: live, tokensFile: tokens }, grpc: { port: 0 } }, (models) => writeModelTree(models, 'mlp', 1, mlpModel()).then(() => undefined));
    httpPort = t.agent.httpAddress?.port ?? 0;
    grpcTarget = `127.0.0.1:${t.agent.grpcAddress?.port ?? 0}`;
  }, 120_000);
  afterAll(async () => {
    await t?.close();
    await py?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('HTTPS with a token answers; without one, or with a wrong one, 401 with no detail; health probes stay open', async () => {
    const ok = await curl(httpPort, '/v2/models/mlp', first.cert, 'token-two');
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body).name).toBe('mlp');
    for (const token of [undefined, 'token-three', 'Token-one', 'sha256:abc']) {
      const refused = await curl(httpPort, '/v2/models/mlp', first.cert, token);
      expect(refused.status, String(token)).toBe(401);
      expect(refused.headers).toMatch(/^WWW-Authenticate: Bearer$/im);
      expect(JSON.parse(refused.body)).toEqual({ error: 'unauthorized: send a valid bearer token (Authorization: Bearer <token>)' });
    }
    // Unknown endpoints and the metrics look the same as everything else without a token.
    expect((await curl(httpPort, '/v2/models/nope', first.cert)).status).toBe(401);
    expect((await curl(httpPort, '/metrics', first.cert)).status).toBe(401);
    expect((await curl(httpPort, '/v2/health/ready', first.cert)).status).toBe(200);
    expect((await curl(httpPort, '/v2/health/live', first.cert)).status).toBe(200);
    // Plain HTTP to the TLS port gets no answer.
    await expect(fetch(`http://127.0.0.1:${httpPort}/v2/health/live`)).rejects.toThrow();
  });

  it('gRPC over TLS with grpcio: UNAUTHENTICATED without a valid token, ServerLive and ServerReady open', async () => {
    const tls = { ca: first.cert, serverName: 'localhost' };
    const [withToken, without, wrong] = await py.call(grpcTarget, 'tf-status', [{ model: 'mlp', tls, token: 'token-one' }, { model: 'mlp', tls }, { model: 'mlp', tls, token: 'nope' }]);
    expect(withToken, JSON.stringify(withToken)).toEqual({ ok: [{ version: 1, state: 'AVAILABLE', errorCode: 0 }] });
    for (const r of [without, wrong]) expect(r).toEqual({ code: 'UNAUTHENTICATED', details: 'unauthorized: send a valid bearer token (metadata "authorization: Bearer <token>")' });
    const [infer] = await py.call(grpcTarget, 'model-infer', [{ model: 'nope', tls, inputs: [] }]);
    expect(infer?.code).toBe('UNAUTHENTICATED');
    const [health] = await py.call(grpcTarget, 'v2-health', [{ tls }]);
    expect(health?.ok).toEqual({ live: true, ready: true });
    // A client that does not trust the certificate never gets as far as a call.
    const [untrusted] = await py.call(grpcTarget, 'v2-health', [{ tls: { ca: second.cert, serverName: 'localhost' } }]);
    expect(untrusted?.code).toBe('UNAVAILABLE');
  });

  it('reload serves a renewed certificate and token file to new connections; a broken one keeps the old', async () => {
    await run('cp', [second.cert, live.cert]);
    await run('cp', [second.key, live.key]);
    await writeFile(tokens, `${digest('token-three')}\n`);
    await t.agent.reload();
    expect((await curl(httpPort, '/v2/models/mlp', second.cert, 'token-three')).status).toBe(200);
    expect((await curl(httpPort, '/v2/models/mlp', second.cert, 'token-one')).status).toBe(401);
    expect((await curl(httpPort, '/v2/models/mlp', first.cert, 'token-three')).error).toMatch(/certificate/i);
    const [grpc] = await py.call(grpcTarget, 'tf-status', [{ model: 'mlp', tls: { ca: second.cert, serverName: 'localhost' }, token: 'token-three' }]);
    expect(grpc?.ok).toHaveLength(1);
    // A half-written renewal (a key that is not the certificate's) and a malformed token file change nothing.
    await run('cp', [first.key, live.key]);
    await writeFile(tokens, 'not a digest\n');
    await t.agent.reload();
    expect((await curl(httpPort, '/v2/models/mlp', second.cert, 'token-three')).status).toBe(200);
  });
});

describe('bearer tokens reloaded on SIGHUP (the agent entry point)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-sighup-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('a token added to the file is accepted after SIGHUP, a removed one refused', async () => {
    const tokens = join(dir, 'tokens');
    await writeFile(tokens, `${digest('old-token')}\n`);
    const agent = await spawnAgent(dir, { api: { tokensFile: tokens } });
    try {
      const get = (token: string): Promise<number> => fetch(`${agent.url}/v2`, { headers: { authorization: `Bearer ${token}` } }).then((r) => r.status);
      expect(await get('old-token')).toBe(200);
      expect(await get('new-token')).toBe(401);
      await writeFile(tokens, `${digest('new-token')}\n`);
      agent.proc.kill('SIGHUP');
      await waitFor(async () => (await get('new-token')) === 200, 10_000, 'the new token to be accepted');
      expect(await get('old-token')).toBe(401);
    } finally {
      agent.proc.kill('SIGTERM');
      await agent.exited;
    }
  }, 60_000);
});
