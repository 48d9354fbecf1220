import { badRequest } from '../errors.js';
import type { Selector } from '../serving/registry.js';

export type Route =
  | { kind: 'v1-status'; model: string; selector: Selector }
  | { kind: 'v1-metadata'; model: string; selector: Selector }
  | { kind: 'v1-predict'; model: string; selector: Selector }
  | { kind: 'v1-unsupported'; model: string; method: string }
  | { kind: 'v2-server' }
  | { kind: 'v2-live' }
  | { kind: 'v2-ready' }
  | { kind: 'v2-model'; model: string; selector: Selector }
  | { kind: 'v2-model-ready'; model: string; selector: Selector }
  | { kind: 'v2-infer'; model: string; selector: Selector }
  | { kind: 'metrics' };

/** Where Prometheus text is served: the usual path, and TensorFlow Serving's (the default of its monitoring config). */
const METRICS_PATHS: readonly string[] = ['/metrics', '/monitoring/prometheus/metrics'];

const isGet = (method: string): boolean => method === 'GET' || method === 'HEAD';

/** Whether the request asks for the Prometheus text: GET or HEAD of one of METRICS_PATHS. */
export function isMetricsRequest(method: string, rawPath: string): boolean {
  return isGet(method) && METRICS_PATHS.includes(rawPath.split('?', 1)[0] as string);
}

const V1 = /^\/v1\/models\/([^/:]+)(?:\/versions\/([^/:]+)|\/labels\/([^/:]+))?(?:(\/metadata)|:([A-Za-z]+))?\/?$/;
const V2_MODEL = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(\/ready|\/infer)?\/?$/;

function version(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  if (!/^[1-9][0-9]*$/.test(raw) || !Number.isSafeInteger(Number(raw))) throw badRequest(`model version "${raw}" is not a positive integer`);
  return Number(raw);
}

function decode(part: string): string {
  if (!part.includes('%')) return part;
  try {
    return decodeURIComponent(part);
  } catch {
    throw badRequest(`path segment "${part}" is not valid percent-encoding`);
  }
}

/** Maps method and path to a route; undefined means 404. */
export function matchRoute(method: string, rawPath: string): Route | undefined {
  const path = rawPath.split('?', 1)[0] as string;
  const get = isGet(method);
  if (METRICS_PATHS.includes(path)) return get ? { kind: 'metrics' } : undefined;
  if (path === '/v2' || path === '/v2/') return get ? { kind: 'v2-server' } : undefined;
  if (path === '/v2/health/live') return get ? { kind: 'v2-live' } : undefined;
  if (path === '/v2/health/ready') return get ? { kind: 'v2-ready' } : undefined;
  const v1 = V1.exec(path);
  if (v1) {
    const model = decode(v1[1] as string);
    const selector: Selector = { version: version(v1[2]), label: v1[3] === undefined ? undefined : decode(v1[3]) };
    if (v1[5] !== undefined) {
      if (method !== 'POST') return undefined;
      return v1[5] === 'predict' ? { kind: 'v1-predict', model, selector } : { kind: 'v1-unsupported', model, method: v1[5] };
    }
    if (!get) return undefined;
    return v1[4] ? { kind: 'v1-metadata', model, selector } : { kind: 'v1-status', model, selector };
  }
  const v2 = V2_MODEL.exec(path);
  if (v2) {
    const model = decode(v2[1] as string);
    const selector: Selector = { version: version(v2[2]) };
    if (v2[3] === '/infer') return method === 'POST' ? { kind: 'v2-infer', model, selector } : undefined;
    if (!get) return undefined;
    return v2[3] === '/ready' ? { kind: 'v2-model-ready', model, selector } : { kind: 'v2-model', model, selector };
  }
  return undefined;
}
