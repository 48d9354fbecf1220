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
import type * as OrtModule from 'onnxruntime-node';

export type Ort = typeof OrtModule;

let loading: Promise<Ort> | undefined;

export function loadOrt(): Promise<Ort> {
  process.env.ORT_DISABLE_TELEMETRY = '1';
  loading ??= import('onnxruntime-node').then((ort) => {
    // Native errors all reach callers as exceptions; keep expected ones (a provider probe) off stderr.
    ort.env.logLevel = 'fatal';
    return ort;
  });
  return loading;
}
