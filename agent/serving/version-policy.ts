import type { VersionPolicy } from '../config/schema.js';

/** TensorFlow Serving's version policy: which of the versions on disk to serve. */
export function selectVersions(policy: VersionPolicy, candidates: readonly number[]): number[] {
  const sorted = [...new Set(candidates)].sort((a, b) => b - a);
  if ('latest' in policy) return sorted.slice(0, policy.latest.numVersions);
  if ('all' in policy) return sorted;
  const wanted = new Set(policy.specific.versions);
  return sorted.filter((v) => wanted.has(v));
}
