/**
 * Command-line parsing helpers shared by the commands: node:util parseArgs
 * errors turned into usage errors, comma lists, integers and expiry times.
 */
import { formatTime, parseTime } from '../protocol/index.js';
import { UsageError, errorMessage } from './errors.js';

/** Runs a parseArgs call, turning its TypeError into a UsageError. */
export function parseOrUsage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    // Node's message suggests '-- "--foo"' for unknown options; the short first sentence is clearer.
    const first = errorMessage(err).split('\n')[0] ?? 'invalid arguments';
    throw new UsageError(first.replace(/\. To specify a positional argument.*$/, ''));
  }
}

/** The value of a required string option. */
export function required(value: string | undefined, flag: string, what: string): string {
  if (value === undefined || value === '') throw new UsageError(`missing --${flag} ${what}`);
  return value;
}

/** Values of a repeatable option, each possibly a comma-separated list, without empty items. */
export function listOf(values: string | string[] | undefined): string[] {
  if (values === undefined) return [];
  const all = Array.isArray(values) ? values : [values];
  return all.flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');
}

export function requiredList(values: string | string[] | undefined, flag: string, what: string): string[] {
  const list = listOf(values);
  if (list.length === 0) throw new UsageError(`missing --${flag} ${what}`);
  return list;
}

/** A decimal integer in [min, max]; undefined when the option was not given. */
export function intOption(value: string | undefined, flag: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer from ${min} to ${max}`;
    throw new UsageError(`--${flag} must be ${range}, got "${value}"`);
  }
  return n;
}

const UNIT_MS: Record<string, number> = {
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  y: 365 * 86_400_000, // a calendar-free year: expiries need not land on an anniversary
};

/**
 * An expiry as an RFC 3339 UTC time: either a duration after `from` (`30d`,
 * `12h`, `10y`) or an absolute time (`2036-01-01T00:00:00Z`), which must be later than `from`.
 */
export function expiryOption(value: string, flag: string, from: number): string {
  const m = /^(\d+)([smhdwy])$/.exec(value);
  if (m) {
    const ms = Number(m[1]) * (UNIT_MS[m[2] ?? ''] ?? 0);
    if (ms <= 0 || !Number.isSafeInteger(ms)) throw new UsageError(`--${flag} must be a positive duration, got "${value}"`);
    return formatTime(from + ms);
  }
  const at = parseTime(value);
  if (at === undefined) {
    throw new UsageError(`--${flag} must be a duration such as 30d, 12h or 10y, or an RFC 3339 UTC time such as 2036-01-01T00:00:00Z; got "${value}"`);
  }
  if (at <= from) throw new UsageError(`--${flag} ${value} is not in the future`);
  return value;
}

/**
 * The value of an option that has a new name and an old one kept working:
 * the old name warns, and both together are a usage error.
 */
export function renamedOption<T>(
  values: Readonly<Record<string, unknown>>, current: string, old: string, warn: (line: string) => void,
): T | undefined {
  const now = values[current] as T | undefined;
  const before = values[old] as T | undefined;
  if (before === undefined) return now;
  if (now !== undefined) throw new UsageError(`--${old} is the old name of --${current}; pass only --${current}`);
  warn(`warning: --${old} is deprecated; use --${current}`);
  return before;
}
