/**
 * The only place that loads onnxruntime-node.
 *
 * onnxruntime-node (1.30 on Linux) starts a telemetry system of its own that
 * writes a persistent device id under ~/.cache/Microsoft/DeveloperTools and is
 * built to upload over HTTPS unless ORT_DISABLE_TELEMETRY=1 is set before the
 * library loads. A fleet agent on other people's networks must never let it
 * run, so the variable is forced here, before the dynamic import, whatever the
 * unit file or the caller's environment says.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type * as OrtModule from 'onnxruntime-node';

export type Ort = typeof OrtModule;

let loading: Promise<Ort> | undefined;
let loadedFrom: string | undefined;

/**
 * The bundled onnxruntime-node, or the build in folder `from` (runtime.onnxruntimePath,
 * checked first by inspectOrtBuild). A process loads one ONNX Runtime, once.
 */
export function loadOrt(from?: string): Promise<Ort> {
  process.env.ORT_DISABLE_TELEMETRY = '1';
  if (loading) {
    if (from !== loadedFrom) throw new Error(`ONNX Runtime is loaded from ${loadedFrom ?? 'the bundled onnxruntime-node'} already; a process cannot load a second one from ${from ?? 'the bundle'}`);
    return loading;
  }
  loadedFrom = from;
  const load = from ? Promise.resolve().then(() => createRequire(join(from, 'package.json'))('./dist/index.js') as Ort) : import('onnxruntime-node');
  loading = load.then((ort) => {
    // Native errors all reach callers as exceptions; keep expected ones (a provider probe) off stderr.
    ort.env.logLevel = 'fatal';
    return ort;
  });
  return loading;
}
