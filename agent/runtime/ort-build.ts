/**
 * runtime.onnxruntimePath: an onnxruntime-node build of the board's own (a Jetson's
 * CUDA and TensorRT build, docs/execution-providers.md) used instead of the bundled
 * CPU build. The folder is checked before it is loaded, so a wrong one is named for
 * what is wrong with it rather than surfacing as a module resolution error.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { EdgefleetError } from '../errors.js';

/** What start-up found in the folder; logged with the provider report. */
export interface OrtBuild {
  path: string;
  version: string;
  /** The native binding ONNX Runtime's JavaScript side loads on this platform. */
  binding: string;
  /** The provider libraries next to it, e.g. libonnxruntime_providers_cuda.so. */
  providerLibraries: string[];
}

/** The binding folder onnxruntime-node loads from (its dist/binding.js). */
export function bindingDir(root: string): string {
  return join(root, 'bin', 'napi-v6', process.platform, process.arch);
}

/** The version of the onnxruntime-node this agent was built and tested with. */
export function bundledOrtVersion(): string {
  const pkg = createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string };
  return pkg.version;
}

const minor = (v: string): string => v.split('.').slice(0, 2).join('.');

export function inspectOrtBuild(path: string): OrtBuild {
  const problem = (what: string): EdgefleetError =>
    new EdgefleetError('CONFIG', `runtime.onnxruntimePath ${path}: ${what} (name the folder of an onnxruntime-node build, js/node in an ONNX Runtime build tree; see docs/execution-providers.md)`);
  let pkg: { name?: string; version?: string };
  try {
    pkg = JSON.parse(readFileSync(join(path, 'package.json'), 'utf8')) as typeof pkg;
  } catch (err) {
    throw problem(existsSync(path) ? `its package.json cannot be read (${(err as Error).message})` : 'no such folder');
  }
  if (pkg.name !== 'onnxruntime-node') throw problem(`its package.json names "${pkg.name ?? ''}", not onnxruntime-node`);
  const version = pkg.version ?? '';
  const bundled = bundledOrtVersion();
  if (minor(version) !== minor(bundled)) throw problem(`it is version ${version || 'unknown'}, the agent is built for ${minor(bundled)}.x`);
  const dir = bindingDir(path);
  const binding = join(dir, 'onnxruntime_binding.node');
  if (!existsSync(binding)) throw problem(`no ${process.platform}/${process.arch} binding: ${binding} is missing`);
  if (!existsSync(join(path, 'dist', 'index.js'))) throw problem('no dist/index.js: build its JavaScript side too, with npm run build in js/node');
  const providerLibraries = readdirSync(dir).filter((f) => /^libonnxruntime_providers_.*\.so$/.test(f)).sort();
  return { path, version, binding, providerLibraries };
}

/** Why a provider the probe could not use is missing from this build, when its library is absent. */
export function missingLibrary(build: OrtBuild, ep: string): string | undefined {
  if (ep !== 'cuda' && ep !== 'tensorrt') return undefined;
  const lib = `libonnxruntime_providers_${ep}.so`;
  return build.providerLibraries.includes(lib) ? undefined : `${lib} is not in ${bindingDir(build.path)}`;
}
