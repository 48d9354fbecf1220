/**
 * One page of the fleet table: which devices (filters), in which order
 * (sort), and which slice (offset, limit). The dashboard's /api/devices reads
 * its query parameters into a FleetQuery (every problem reported at once,
 * never a silent default for a bad value), and `pageFleet` applies it to the
 * rows the store assembled. Pure: no I/O, so it is tested on its own.
 */
import { GROUP_RE, MODEL_NAME_RE, parseTime } from '../../protocol/index.js';
import { byDevice } from '../device-summary.js';
import type { FleetRow } from './store.js';

export const FLEET_SORTS = ['device', 'lastSeen', 'online', 'errors', 'p99', 'dropped'] as const;
export type FleetSort = (typeof FLEET_SORTS)[number];

export const DEFAULT_PAGE_LIMIT = 100;
export const MAX_PAGE_LIMIT = 1000;
/** The search box matches this much of a device id, at most. */
const MAX_SEARCH = 64;

export interface FleetQuery {
  offset: number;
  limit: number;
  sort: FleetSort;
  desc: boolean;
  group?: string;
  model?: string;
  online?: boolean;
  /** Only devices whose last interval had errors (true) or had none (false). */
  errors?: boolean;
  /** Only devices with a model whose last p99 is at least this (ms). */
  minP99?: number;
  /** Only devices whose id contains this (case-insensitive). */
  search?: string;
}

export interface FleetPage {
  /** Devices that pass the filters, on every page. */
  total: number;
  /** Of those, how many are online. */
  online: number;
  offset: number;
  limit: number;
  sort: FleetSort;
  desc: boolean;
  rows: FleetRow[];
}

export class FleetQueryError extends Error {}

const KNOWN = new Set(['offset', 'limit', 'sort', 'desc', 'group', 'model', 'online', 'errors', 'minP99', 'search']);

/** The query of `/api/devices`; throws FleetQueryError naming every bad parameter. */
export function parseFleetQuery(q: URLSearchParams): FleetQuery {
  const problems: string[] = [];
  const get = (name: string): string | undefined => {
    const v = q.get(name);
    return v === null || v === '' ? undefined : v;
  };
  const int = (name: string, min: number, max: number, dflt: number): number => {
    const text = get(name);
    if (text === undefined) return dflt;
    const n = /^\d+$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      problems.push(`${name} must be an integer from ${min} to ${max}, got "${text}"`);
      return dflt;
    }
    return n;
  };
  const bool = (name: string): boolean | undefined => {
    const text = get(name);
    if (text === undefined) return undefined;
    if (text === 'true' || text === '1') return true;
    if (text === 'false' || text === '0') return false;
    problems.push(`${name} must be true or false, got "${text}"`);
    return undefined;
  };
  const name = (param: string, re: RegExp, what: string): string | undefined => {
    const text = get(param);
    if (text !== undefined && !re.test(text)) problems.push(`${param} "${text}" is not a valid ${what}`);
    return text !== undefined && re.test(text) ? text : undefined;
  };
  for (const key of q.keys()) if (!KNOWN.has(key)) problems.push(`unknown parameter "${key}" (known: ${[...KNOWN].join(', ')})`);

  const sortText = get('sort') ?? 'device';
  const sort = (FLEET_SORTS as readonly string[]).includes(sortText) ? (sortText as FleetSort) : undefined;
  if (sort === undefined) problems.push(`sort must be one of ${FLEET_SORTS.join(', ')}, got "${sortText}"`);
  const minP99Text = get('minP99');
  const minP99 = minP99Text === undefined ? undefined : Number(minP99Text);
  if (minP99 !== undefined && !(Number.isFinite(minP99) && minP99 >= 0)) problems.push(`minP99 must be a number of milliseconds, 0 or more, got "${minP99Text}"`);
  const search = get('search');
  if (search !== undefined && search.length > MAX_SEARCH) problems.push(`search must be at most ${MAX_SEARCH} characters`);

  const query: FleetQuery = {
    offset: int('offset', 0, Number.MAX_SAFE_INTEGER, 0),
    limit: int('limit', 0, MAX_PAGE_LIMIT, DEFAULT_PAGE_LIMIT),
    sort: sort ?? 'device',
    desc: bool('desc') ?? false,
  };
  const group = name('group', GROUP_RE, 'group name');
  const model = name('model', MODEL_NAME_RE, 'model name');
  const online = bool('online');
  const errors = bool('errors');
  if (problems.length > 0) throw new FleetQueryError(problems.join('; '));
  if (group !== undefined) query.group = group;
  if (model !== undefined) query.model = model;
  if (online !== undefined) query.online = online;
  if (errors !== undefined) query.errors = errors;
  if (minP99 !== undefined) query.minP99 = minP99;
  if (search !== undefined) query.search = search.toLowerCase();
  return query;
}

export const rowErrors = (r: FleetRow): number => r.inference.reduce((n, i) => n + i.errors, 0);
/** The worst p99 over the device's models; null when none reported latency. */
export const rowP99 = (r: FleetRow): number | null =>
  r.inference.reduce<number | null>((m, i) => (i.p99 === null ? m : Math.max(m ?? 0, i.p99)), null);

function passes(r: FleetRow, q: FleetQuery): boolean {
  if (q.group !== undefined && !r.groups.includes(q.group)) return false;
  if (q.model !== undefined && !r.models.some((m) => m.name === q.model) && !r.inference.some((i) => i.model === q.model)) return false;
  if (q.online !== undefined && (r.online === true) !== q.online) return false;
  if (q.errors !== undefined && rowErrors(r) > 0 !== q.errors) return false;
  if (q.minP99 !== undefined && !((rowP99(r) ?? -1) >= q.minP99)) return false;
  if (q.search !== undefined && !r.device.toLowerCase().includes(q.search)) return false;
  return true;
}

/** The sort key; null sorts after every value whichever the direction (a device that never said goes last). */
function key(r: FleetRow, sort: FleetSort): number | string | null {
  switch (sort) {
    case 'device':
      return r.device;
    case 'lastSeen':
      return r.lastSeen === null ? null : (parseTime(r.lastSeen) ?? null);
    case 'online':
      return r.online === null ? null : r.online ? 1 : 0;
    case 'errors':
      return r.inference.length === 0 ? null : rowErrors(r);
    case 'p99':
      return rowP99(r);
    case 'dropped':
      return r.dropped.count;
    default: {
      const never: never = sort;
      throw new Error(`unknown sort ${String(never)}`);
    }
  }
}

/** Filters, sorts (ties by device id) and slices `rows`. */
export function pageFleet(rows: readonly FleetRow[], q: FleetQuery): FleetPage {
  const kept = rows.filter((r) => passes(r, q));
  const keyed = kept.map((r) => ({ r, k: key(r, q.sort) }));
  const dir = q.desc ? -1 : 1;
  keyed.sort((a, b) => {
    if (a.k !== b.k) {
      if (a.k === null) return 1;
      if (b.k === null) return -1;
      if (a.k < b.k) return -dir;
      if (a.k > b.k) return dir;
    }
    return byDevice(a.r, b.r);
  });
  return {
    total: kept.length,
    online: kept.filter((r) => r.online === true).length,
    offset: q.offset,
    limit: q.limit,
    sort: q.sort,
    desc: q.desc,
    rows: keyed.slice(q.offset, q.offset + q.limit).map((x) => x.r),
  };
}
