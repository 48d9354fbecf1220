import { spawnSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrt } from '../agent/runtime/ort.js';
import { bindingDir, bundledOrtVersion, inspectOrtBuild } from '../agent/runtime/ort-build.js';
import { probeProviders } from '../agent/runtime/providers.js';
import { createSession } from '../agent/runtime/session.js';
import { mlpModel } from '../models/onnx/zoo.js';
import { REPO, spawnAgent } from './helpers/child.js';

const options = { executionProviders: ['cpu' as const], intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' as const, warmupRuns: 0, ortLogLevel: 'fatal' as const };

describe('execution provider probe', () => {
  it('finds CPU and reports why the accelerators of the bundled build are unavailable', async () => {
    const ort = await loadOrt();
    const report = await probeProviders(ort, ['tensorrt', 'cuda', 'xnnpack', 'cpu']);
    expect(report.available).toEqual(['cpu']);
    expect(Object.keys(report.unavailable).sort()).toEqual(['cuda', 'tensorrt', 'xnnpack']);
    expect(report.unavailable.xnnpack).toMatch(/not built into/);
    expect(report.unavailable.cuda).toMatch(/could not be loaded|Failed/);
  });

  it('always keeps CPU as the floor even when it is not configured', async () => {
    const report = await probeProviders(await loadOrt(), ['xnnpack']);
    expect(report.available).toEqual(['cpu']);
  });

  it('falls through the chain to the provider that loads the model', async () => {
    const ort = await loadOrt();
    const fallbacks: string[] = [];
    // 'cuda' is listed as available here on purpose to exercise the fall-through.
    const session = await createSession(ort, mlpModel(), ['cuda', 'cpu'], options, (ep) => fallbacks.push(ep));
    expect(session.executionProvider).toBe('cpu');
    expect(fallbacks).toEqual(['cuda']);
    expect(session.inputs).toEqual([{ name: 'x', datatype: 'FP32', shape: [-1, 784] }]);
    await session.release();
  });

  it('refuses bytes that are not a model with a clear error', async () => {
    await expect(createSession(await loadOrt(), new Uint8Array([1, 2, 3]), ['cpu'], options)).rejects.toThrow(/could not load the model/);
  });
});

describe('runtime.onnxruntimePath: an onnxruntime-node build of the board\'s own', () => {
  let dir: string;
  let build: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-ort-build-'));
    // The bundled CPU build laid out as a build of one's own: package.json, dist/, this
    // platform's binding, its dependency beside it. It has no CUDA or TensorRT library.
    build = join(dir, 'onnxruntime-node');
    const bundled = join(REPO, 'node_modules', 'onnxruntime-node');
    await mkdir(join(build, 'node_modules'), { recursive: true });
    await cp(join(bundled, 'package.json'), join(build, 'package.json'));
    await cp(join(bundled, 'dist'), join(build, 'dist'), { recursive: true });
    await cp(bindingDir(bundled), bindingDir(build), { recursive: true });
    await symlink(join(REPO, 'node_modules', 'onnxruntime-common'), join(build, 'node_modules', 'onnxruntime-common'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses a folder that is not a build for this platform, saying what is wrong with it', async () => {
    const expectProblem = (path: string, what: RegExp): void => {
      expect(() => inspectOrtBuild(path)).toThrow(new RegExp(`^runtime\\.onnxruntimePath ${path}: ${what.source} \\(name the folder of an onnxruntime-node build`));
    };
    expectProblem(join(dir, 'absent'), /no such folder/);
    const other = join(dir, 'other');
    await mkdir(other);
    await writeFile(join(other, 'package.json'), '{"name":"onnxruntime-web","version":"1.30.0"}');
    expectProblem(other, /its package\.json names "onnxruntime-web", not onnxruntime-node/);
    await writeFile(join(other, 'package.json'), '{"name":"onnxruntime-node","version":"1.16.3"}');
    expectProblem(other, /it is version 1\.16\.3, the agent is built for 1\.30\.x/);
    await writeFile(join(other, 'package.json'), JSON.stringify({ name: 'onnxruntime-node', version: bundledOrtVersion() }));
    expectProblem(other, new RegExp(`no ${process.platform}/${process.arch} binding: .*onnxruntime_binding\\.node is missing`));
    await cp(bindingDir(build), bindingDir(other), { recursive: true });
    expectProblem(other, /no dist\/index\.js: build its JavaScript side too, with npm run build in js\/node/);
    expect(inspectOrtBuild(build)).toEqual({ path: build, version: bundledOrtVersion(), binding: join(bindingDir(build), 'onnxruntime_binding.node'), providerLibraries: [] });
  });

  it('the agent loads it, serves, and reports which provider libraries it lacks', async () => {
    const agent = await spawnAgent(dir, { runtime: { executionProviders: ['tensorrt', 'cuda', 'cpu'], warmupRuns: 0, onnxruntimePath: build } });
    try {
      const line = agent.output().split('\n').find((l) => l.includes('"execution providers probed"'));
      const logged = JSON.parse(line ?? '{}');
      expect(logged.onnxruntime).toMatchObject({ path: build, providerLibraries: [] });
      expect(logged.providers).toEqual({
        available: ['cpu'],
        unavailable: { tensorrt: `libonnxruntime_providers_tensorrt.so is not in ${bindingDir(build)}`, cuda: `libonnxruntime_providers_cuda.so is not in ${bindingDir(build)}` },
      });
    } finally {
      agent.proc.kill('SIGTERM');
      await agent.exited;
    }
  });

  it('a wrong path stops the agent with exit status 2 and the reason', async () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(REPO, 'agent', 'bin.ts'), '--config', await writeConfig(dir, join(dir, 'absent'))], { cwd: REPO, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`runtime.onnxruntimePath ${join(dir, 'absent')}: no such folder`);
  });
});

async function writeConfig(dir: string, onnxruntimePath: string): Promise<string> {
  const file = join(dir, 'bad-ort.json');
  await writeFile(file, JSON.stringify({ deviceId: 'ort-path', stateDir: join(dir, 'state-bad'), http: { port: 0 }, runtime: { onnxruntimePath } }));
  return file;
}
