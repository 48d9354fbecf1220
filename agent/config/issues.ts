/**
 * Schema problems as the operator reads them: one line each, naming the key
 * path, and for an unknown key the known key of the same object it is most
 * likely a typo of ("did you mean keepaliveS?").
 */
import { z } from 'zod';

/** Optional, default, prefault and the like wrap the schema that says what the value is. */
function unwrap(schema: z.core.$ZodType): z.core.$ZodType {
  const def = schema._zod.def as { innerType?: z.core.$ZodType };
  if (def.innerType) return unwrap(def.innerType);
  if (schema instanceof z.ZodPipe) return unwrap(schema.in);
  return schema;
}

/** The keys the object at `path` may have: of the object there, or of every object a union there allows. */
export function knownKeys(schema: z.core.$ZodType, path: readonly PropertyKey[]): string[] | undefined {
  const node = unwrap(schema);
  if (node instanceof z.ZodUnion) {
    const keys = node.options.map((option) => knownKeys(option, path)).filter((k) => k !== undefined);
    return keys.length === 0 ? undefined : [...new Set(keys.flat())];
  }
  if (path.length === 0) return node instanceof z.ZodObject ? Object.keys(node.shape) : undefined;
  const [key, ...rest] = path;
  if (node instanceof z.ZodObject) {
    const child = (node.shape as Record<string, z.core.$ZodType | undefined>)[String(key)];
    return child === undefined ? undefined : knownKeys(child, rest);
  }
  if (node instanceof z.ZodRecord) return knownKeys(node.valueType, rest);
  if (node instanceof z.ZodArray) return knownKeys(node.element, rest);
  return undefined;
}

/** Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`. */
export function editDistance(a: string, b: string): number {
  // Rows i-2, i-1 and i of the usual table, reused.
  let before = new Array<number>(b.length + 1).fill(0);
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  let current = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    current[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, (previous[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, (before[j - 2] as number) + 1);
      current[j] = d;
    }
    [before, previous, current] = [previous, current, before];
  }
  return previous[b.length] as number;
}

/**
 * The known key `unknown` most likely misspells, case ignored, or undefined
 * when none is near: at most a third of the longer name may differ (at least
 * one character), so "keepalive" finds keepaliveS but "port" does not find host.
 */
export function nearestKey(unknown: string, known: readonly string[]): string | undefined {
  const wanted = unknown.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const key of known) {
    const d = editDistance(wanted, key.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [key, d];
  }
  if (best === undefined) return undefined;
  return bestDistance <= Math.max(1, Math.floor(Math.max(wanted.length, best.length) / 3)) ? best : undefined;
}

function unknownKeys(keys: readonly string[], known: readonly string[] | undefined): string {
  const listed = keys.map((key) => {
    const near = known === undefined ? undefined : nearestKey(key, known);
    return near === undefined ? `"${key}"` : `"${key}" (did you mean ${near}?)`;
  });
  return `unknown key(s) ${listed.join(', ')}`;
}

/** Keys no option of a union of objects knows (each option reports the keys it does not know). */
function unknownToEveryOption(issue: z.core.$ZodIssueInvalidUnion): string[] {
  const perOption = issue.errors.map(
    (errors) => new Set(errors.flatMap((e) => (e.code === 'unrecognized_keys' && e.path.length === 0 ? e.keys : []))),
  );
  const [first, ...others] = perOption;
  return [...(first ?? [])].filter((key) => others.every((keys) => keys.has(key)));
}

/** Formats every problem `schema` reported, one per line, with the key path that has it. */
export function formatIssues(issues: readonly z.core.$ZodIssue[], schema: z.core.$ZodType): string[] {
  return issues.map((issue) => {
    const where = issue.path.length > 0 ? issue.path.join('.') : '(root)';
    if (issue.code === 'unrecognized_keys') return `${where}: ${unknownKeys(issue.keys, knownKeys(schema, issue.path))}`;
    if (issue.code === 'invalid_union') {
      // A union of objects (versionPolicy): say which keys it takes instead of zod's "Invalid input".
      const known = knownKeys(schema, issue.path);
      if (known !== undefined) {
        const unknown = unknownToEveryOption(issue);
        const expected = `must be an object with one of the keys ${known.join(', ')}`;
        return `${where}: ${unknown.length > 0 ? `${unknownKeys(unknown, known)}; ${expected}` : expected}`;
      }
    }
    return `${where}: ${issue.message}`;
  });
}
