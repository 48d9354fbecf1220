/**
 * The collector's storage: one interface, two backends (SQLite, embedded and
 * the default; PostgreSQL for bigger fleets), and the backend-free pieces
 * both share: how a point becomes a row, how events are keyed, and how the
 * fleet table is assembled from what was stored.
 */
import { createHash } from 'node:crypto';
import type { DeviceEvent, DroppedPoint, HealthPoint, InferencePoint, ReportedState, Status, TelemetryPoint } from '../../protocol/index.js';
import { formatTime, parseTime } from '../../protocol/index.js';
import type { AlertRecords } from './alert-records.js';
import type { RolloutRecords } from './rollout-records.js';
import { applyReportedState, byDevice, emptySummary, type DeviceSummary } from '../device-summary.js';

export interface FleetFilters {
  /** Only devices that report being in this group. */
  group?: string;
  /** Only devices that report a model of this name (any version, any state). */
  model?: string;
}

/** The last inference interval a device reported for one model. */
export interface InferenceSummary {
  model: string;
  version: number;
  ts: string;
  intervalS: number;
  count: number;
  errors: number;
  /** null when the interval had no requests. */
  p50: number | null;
  p99: number | null;
}

export interface HealthSummary {
  ts: string;
  cpuPct: number;
  load1: number;
  tempC: number | null;
  memUsedBytes: number;
  memTotalBytes: number;
  /** The device's GPUs as its latest health point listed them (empty on boards without one). */
  gpus: GpuSummary[];
}

/** One GPU of a health point; a figure the board cannot read is null. */
export interface GpuSummary {
  name: string;
  utilPct: number | null;
  memUsedBytes: number | null;
  memTotalBytes: number | null;
  tempC: number | null;
}

/** One line of `edgefleet status` and of the dashboard's table. */
export interface FleetRow extends DeviceSummary {
  inference: InferenceSummary[];
  health: HealthSummary | null;
  /** When the device was last heard from (status, state or telemetry), by the collector's clock. */
  lastSeen: string | null;
  /** Points the device reported it had to drop (section 13 'dropped' points, summed). */
  dropped: { count: number; lastAt: string | null };
  /** Points waiting in the device's buffer, from its latest health point; null when it does not say. */
  outbox: { rows: number; bytes: number } | null;
  /** Messages from the device acknowledged without storing: not valid, or refused by the database. */
  quarantined: number;
  /** Messages and points dropped for the device's quotas. */
  overQuota: number;
  /** Points, events and states whose time was too far from arrival, stored with the arrival time. */
  clockSkewed: number;
}

/** A message acknowledged without storing it, kept with why. */
export interface QuarantineEntry {
  device: string;
  topic: string;
  /** Epoch ms. */
  receivedAt: number;
  reason: string;
  /** The payload's size, and its first bytes (at most QUARANTINE_EXCERPT_BYTES). */
  size: number;
  excerpt: Buffer;
}

export const QUARANTINE_EXCERPT_BYTES = 4096;

/** Per-device counters the collector adds to (see ingest-guard.ts). */
export interface DeviceCountsRecord {
  device: string;
  quarantined: number;
  overQuota: number;
  clockSkewed: number;
  dropped: number;
  droppedLastAt: number | null;
}

export interface TimeRange {
  /** Epoch milliseconds, inclusive. */
  from: number;
  to: number;
  /** At most this many samples, the newest ones (default 2000). */
  limit?: number;
}

export interface InferenceSample {
  ts: string;
  model: string;
  version: number;
  count: number;
  errors: number;
  p50: number | null;
  p99: number | null;
}

export interface HealthSample {
  ts: string;
  cpuPct: number;
  tempC: number | null;
  memUsedBytes: number;
  memTotalBytes: number;
  /** Points waiting in the device's buffer (section 13), when the point says. */
  outboxRows?: number;
  outboxBytes?: number;
}

/** A 'dropped' point (section 13): `count` points, seqs oldestSeq..newestSeq, lost on the device. */
export interface DroppedSample {
  ts: string;
  count: number;
  oldestSeq: number;
  newestSeq: number;
  reason: string;
}

export interface DeviceSeries {
  device: string;
  inference: InferenceSample[];
  health: HealthSample[];
  dropped: DroppedSample[];
}

export interface StoredEvent extends DeviceEvent {
  device: string;
}

/** Orders of `fleetPage`: a device without the figure goes last in either direction; ties by device id. */
export const FLEET_PAGE_SORTS = ['device', 'lastSeen', 'online', 'errors', 'p99', 'dropped'] as const;
export type FleetPageSort = (typeof FLEET_PAGE_SORTS)[number];

/** One page of the fleet table; filters combine (and). */
export interface FleetPageQuery {
  /** Rows to skip (default 0). */
  offset?: number;
  /** Rows to return, 0 to MAX_FLEET_PAGE (default 100). */
  limit?: number;
  /** Default 'device'. */
  sort?: FleetPageSort;
  desc?: boolean;
  /** Devices whose reported state lists this group. */
  group?: string;
  /** Devices whose reported state lists this model, or that sent inference points under it. */
  model?: string;
  /** true: online; false: offline or never said. */
  online?: boolean;
  /** true: the last interval of some model had errors; false: none had. */
  errors?: boolean;
  /** Devices whose worst last p99 is at least this (ms). */
  minP99?: number;
  /** Part of the device id, case-insensitive. */
  search?: string;
}

export interface FleetPageResult {
  /** Devices that pass the filters (all pages). */
  total: number;
  /** Of those, how many are online. */
  online: number;
  rows: FleetRow[];
}

export const DEFAULT_FLEET_PAGE = 100;
export const MAX_FLEET_PAGE = 10_000;

/** The query with its defaults, or an error naming each bad field (stores are called by code, so this is a bug check). */
export function checkFleetPageQuery(q: FleetPageQuery): Required<Pick<FleetPageQuery, 'offset' | 'limit' | 'sort' | 'desc'>> & FleetPageQuery {
  const problems: string[] = [];
  const offset = q.offset ?? 0;
  const limit = q.limit ?? DEFAULT_FLEET_PAGE;
  const sort = q.sort ?? 'device';
  if (!Number.isSafeInteger(offset) || offset < 0) problems.push(`offset must be an integer 0 or more, got ${String(offset)}`);
  if (!Number.isSafeInteger(limit) || limit < 0 || limit > MAX_FLEET_PAGE) problems.push(`limit must be an integer from 0 to ${MAX_FLEET_PAGE}, got ${String(limit)}`);
  if (!(FLEET_PAGE_SORTS as readonly string[]).includes(sort)) problems.push(`sort must be one of ${FLEET_PAGE_SORTS.join(', ')}, got ${String(sort)}`);
  if (q.minP99 !== undefined && !(Number.isFinite(q.minP99) && q.minP99 >= 0)) problems.push(`minP99 must be a number 0 or more, got ${String(q.minP99)}`);
  if (problems.length > 0) throw new RangeError(`fleetPage: ${problems.join('; ')}`);
  return { ...q, offset, limit, sort, desc: q.desc ?? false, ...(q.search !== undefined && { search: q.search.toLowerCase() }) };
}

/** Puts assembled rows back in the order the page query returned their devices. */
export function inPageOrder(devices: readonly string[], rows: readonly FleetRow[]): FleetRow[] {
  const byId = new Map(rows.map((r) => [r.device, r]));
  return devices.map((d) => byId.get(d)).filter((r): r is FleetRow => r !== undefined);
}

/** What the rollout views need of a device: its online flag and reported state, no telemetry. */
export type DeviceState = Pick<DeviceSummary, 'device' | 'online' | 'groups' | 'desired' | 'models'>;

/** Devices with a status or a state, by device id. */
export function deviceStatesOf(statuses: readonly { device: string; online: boolean }[], states: readonly { device: string; state: ReportedState }[]): DeviceState[] {
  const rows = new Map<string, DeviceSummary>();
  const rowOf = (device: string): DeviceSummary => rows.get(device) ?? rows.set(device, emptySummary(device)).get(device) as DeviceSummary;
  for (const s of statuses) rowOf(s.device).online = s.online;
  for (const s of states) applyReportedState(rowOf(s.device), s.state);
  return [...rows.values()].sort(byDevice).map(({ device, online, groups, desired, models }) => ({ device, online, groups, desired, models }));
}

export interface FleetStore {
  /** `sqlite` or `postgres`, for logs. */
  readonly kind: string;
  /** Creates or migrates the schema; safe to call from several collectors at once. */
  init(): Promise<void>;
  /**
   * Stores the points not stored yet (key: device and seq); returns how many
   * were new. `receivedAt` (epoch ms) is when they arrived: retention and
   * "last seen" go by it; without it, each point's own time is taken.
   */
  insertPoints(device: string, points: readonly TelemetryPoint[], receivedAt?: number): Promise<number>;
  /**
   * Advances each device's acknowledged prefix (section 12): the highest seq
   * such that every seq up to it is stored or covered by a stored 'dropped'
   * point, starting below the given first seq for a device never
   * acknowledged. Never goes down, also with several collectors on one
   * database. One transaction for all; returns each device's prefix.
   */
  acknowledge(firstSeqs: ReadonlyMap<string, number>): Promise<Map<string, number>>;
  upsertStatus(device: string, status: Status, receivedAt: number): Promise<void>;
  /** Keeps the newer of the stored and the given state (by its `ts`). */
  upsertState(state: ReportedState, receivedAt: number): Promise<void>;
  /** Stores the event unless the same one is stored; returns whether it was new. `receivedAt` as for points. */
  insertEvent(device: string, event: DeviceEvent, receivedAt?: number): Promise<boolean>;
  /** Keeps a message that will not be stored, with why. */
  quarantine(entry: QuarantineEntry): Promise<void>;
  /** The newest quarantined messages, newest first. */
  quarantined(limit: number): Promise<QuarantineEntry[]>;
  /** Adds to per-device counters. */
  addCounts(counts: ReadonlyMap<string, { quarantined: number; overQuota: number; clockSkewed: number }>): Promise<void>;
  /** The model names a device has inference points stored under (for the model-name quota). */
  deviceModels(device: string): Promise<string[]>;
  /** Deletes points, events and quarantined messages that arrived before `before` (epoch ms). */
  prune(before: number): Promise<{ points: number; events: number }>;
  /** Every device's row, by device id (`edgefleet status`). Reads the whole fleet: for pages, fleetPage. */
  fleetStatus(filters?: FleetFilters): Promise<FleetRow[]>;
  /**
   * One page of the fleet table from the per-device summary kept at write
   * time (fleet_devices: online, last seen, errors, worst p99, dropped), so
   * sorting and slicing are one indexed query, and only the page's rows are
   * assembled. Same rows, order and filters as fleet-query.ts's pageFleet
   * over fleetStatus.
   */
  fleetPage(q: FleetPageQuery): Promise<FleetPageResult>;
  /** These devices' online flag and reported state (devices never heard from left out): two indexed reads, no telemetry (the dashboard's rollout waves). */
  deviceStates(devices: readonly string[]): Promise<DeviceState[]>;
  series(device: string, range: TimeRange): Promise<DeviceSeries>;
  events(device: string, range: TimeRange): Promise<StoredEvent[]>;
  /** Staged rollouts (rollout-records.ts); after init(). */
  readonly rollouts: RolloutRecords;
  /** The built-in alert evaluator's alerts and webhook outbox (alert-records.ts); after init(). */
  readonly alerts: AlertRecords;
  close(): Promise<void>;
}

export const DEFAULT_SERIES_LIMIT = 2000;

// ---- rows both backends write ---------------------------------------------

/** A telemetry point as a row of the points table. */
export interface PointRow {
  device: string;
  seq: number;
  ts: number;
  kind: string;
  model: string | null;
  version: number | null;
  count: number | null;
  errors: number | null;
  p50: number | null;
  p99: number | null;
  cpuPct: number | null;
  tempC: number | null;
  memUsed: number | null;
  memTotal: number | null;
  data: string;
}

export const millis = (time: string): number => parseTime(time) ?? 0;

export function pointRow(device: string, p: TelemetryPoint): PointRow {
  const base = { device, seq: p.seq, ts: millis(p.ts), kind: p.kind, data: JSON.stringify(p) };
  const none = { model: null, version: null, count: null, errors: null, p50: null, p99: null, cpuPct: null, tempC: null, memUsed: null, memTotal: null };
  if (p.kind === 'inference') {
    const lat = p.latencyMs;
    return { ...base, ...none, model: p.model, version: p.version, count: p.count, errors: p.errors, p50: lat?.p50 ?? null, p99: lat?.p99 ?? null };
  }
  if (p.kind === 'health') return { ...base, ...none, cpuPct: p.cpuPct, tempC: p.tempC, memUsed: p.memUsedBytes, memTotal: p.memTotalBytes };
  // Shadow evaluations (section 11): samples as the count, disagreements as the errors, for the rollout's shadow gate.
  if (p.kind === 'shadow') return { ...base, ...none, model: p.model, version: p.version, count: p.samples, errors: p.samples - p.agreed, p99: p.latencyMs?.p99 ?? null };
  // 'dropped' points, and the tombstones of points refused for a quota (kind 'over-quota').
  return { ...base, ...none, count: p.kind === 'dropped' ? p.count : null };
}

/** A row of the latest table: the newest point per device and slot (health, or inference of one model). */
export interface LatestRow {
  device: string;
  slot: string;
  ts: number;
  /** When it arrived (epoch ms); for "last seen". */
  receivedAt: number;
  data: string;
}

/** The newest point of each slot in a batch; the store keeps it only when newer than what it has. */
export function latestRows(device: string, points: readonly TelemetryPoint[], receivedAt?: number): LatestRow[] {
  const newest = new Map<string, LatestRow>();
  for (const p of points) {
    if (p.kind !== 'inference' && p.kind !== 'health') continue;
    const slot = p.kind === 'inference' ? `inference/${p.model}` : 'health';
    const ts = millis(p.ts);
    const seen = newest.get(slot);
    if (seen === undefined || ts > seen.ts) newest.set(slot, { device, slot, ts, receivedAt: receivedAt ?? ts, data: JSON.stringify(p) });
  }
  return [...newest.values()];
}

/** Sum and newest time of the 'dropped' points among `points` (those newly stored). */
export function droppedOf(points: readonly TelemetryPoint[], receivedAt?: number): { count: number; lastAt: number } | undefined {
  let count = 0;
  let lastAt = 0;
  for (const p of points) {
    if (p.kind !== 'dropped') continue;
    count += p.count;
    lastAt = Math.max(lastAt, receivedAt ?? millis(p.ts));
  }
  return lastAt === 0 ? undefined : { count, lastAt };
}

/** A point of the acknowledgement walk: its seq, and for a 'dropped' point the seqs it accounts for. */
export interface AckPoint {
  seq: number;
  oldestSeq: number | null;
  newestSeq: number | null;
}

/**
 * How far the acknowledged prefix goes from `upTo`, given the stored points
 * above it in seq order: over every seq stored or covered by a 'dropped'
 * point (which accounts for lower seqs than its own).
 */
export function advanceAck(upTo: number, above: readonly AckPoint[]): number {
  const present = new Set<number>();
  const ranges: [number, number][] = [];
  for (const p of above) {
    present.add(p.seq);
    if (p.oldestSeq !== null && p.newestSeq !== null) ranges.push([p.oldestSeq, p.newestSeq]);
  }
  for (;;) {
    const next = upTo + 1;
    if (present.has(next)) {
      upTo = next;
      continue;
    }
    const range = ranges.find(([from, to]) => from <= next && next <= to);
    if (range === undefined) return upTo;
    upTo = range[1];
  }
}

/** Most points above the acknowledged prefix read at a time; a walk that passes them all reads the next ones. */
export const ACK_WALK_LIMIT = 5000;

/** Whether a walk over `above` (ACK_WALK_LIMIT points at most) that reached `upTo` should read further. */
export function walkGoesOn(above: readonly AckPoint[], upTo: number): boolean {
  const last = above.at(-1);
  return above.length >= ACK_WALK_LIMIT && last !== undefined && upTo >= last.seq;
}

/**
 * Events carry no id, so the key is device, time and a hash of the rest:
 * a redelivered event is dropped, two different events in the same
 * millisecond are both kept.
 */
export function eventHash(event: DeviceEvent): string {
  const canonical = JSON.stringify([event.type, event.model ?? null, event.version ?? null, event.detail ?? null]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 32);
}

// ---- reading back ---------------------------------------------------------

export interface StatusRecord {
  device: string;
  online: boolean;
  /** When it arrived (epoch ms). */
  receivedAt: number;
}

export interface StateRecord {
  device: string;
  state: ReportedState;
  /** When it arrived (epoch ms). */
  receivedAt: number;
}

/**
 * Joins what each table holds into one row per device, sorted by device id.
 * Runs over the whole fleet for `edgefleet status` (10,000 devices), so it
 * mutates the rows it builds instead of copying them.
 */
export function assembleFleet(
  statuses: readonly StatusRecord[],
  states: readonly StateRecord[],
  latest: readonly LatestRow[],
  counts: readonly DeviceCountsRecord[],
  onlyDevices?: ReadonlySet<string>,
): FleetRow[] {
  const rows = new Map<string, FleetRow>();
  const seen = new Map<string, number>();
  const rowOf = (device: string, at: number): FleetRow | undefined => {
    if (onlyDevices !== undefined && !onlyDevices.has(device)) return undefined;
    let row = rows.get(device);
    if (row === undefined) {
      row = {
        ...emptySummary(device),
        inference: [],
        health: null,
        lastSeen: null,
        dropped: { count: 0, lastAt: null },
        outbox: null,
        quarantined: 0,
        overQuota: 0,
        clockSkewed: 0,
      };
      rows.set(device, row);
    }
    if (at > (seen.get(device) ?? 0)) seen.set(device, at);
    return row;
  };
  for (const s of statuses) {
    const row = rowOf(s.device, s.receivedAt);
    if (row !== undefined) row.online = s.online;
  }
  for (const { device, state, receivedAt } of states) {
    const row = rowOf(device, receivedAt);
    if (row !== undefined) applyReportedState(row, state);
  }
  for (const l of latest) {
    const row = rowOf(l.device, l.receivedAt);
    if (row !== undefined) applyLatest(row, JSON.parse(l.data) as TelemetryPoint);
  }
  // Counters alone (a device whose every message was refused) still make a row: the operator must see it.
  for (const c of counts) {
    const row = rowOf(c.device, 0);
    if (row === undefined) continue;
    row.quarantined = c.quarantined;
    row.overQuota = c.overQuota;
    row.clockSkewed = c.clockSkewed;
    row.dropped = { count: c.dropped, lastAt: c.droppedLastAt === null ? null : formatTime(c.droppedLastAt) };
  }
  const out = [...rows.values()].sort(byDevice);
  for (const row of out) {
    const at = seen.get(row.device);
    if (at !== undefined) row.lastSeen = formatTime(at);
    if (row.inference.length > 1) row.inference.sort((a, b) => (a.model < b.model ? -1 : a.model > b.model ? 1 : 0));
  }
  return out;
}

function applyLatest(row: FleetRow, p: TelemetryPoint): void {
  if (p.kind === 'health') {
    row.health = healthSummary(p);
    row.outbox = p.outboxRows === undefined ? null : { rows: p.outboxRows, bytes: p.outboxBytes ?? 0 };
    return;
  }
  if (p.kind === 'inference') row.inference.push(inferenceSummary(p));
}

function inferenceSummary(p: InferencePoint): InferenceSummary {
  const { model, version, ts, intervalS, count, errors } = p;
  return { model, version, ts, intervalS, count, errors, p50: p.latencyMs?.p50 ?? null, p99: p.latencyMs?.p99 ?? null };
}

function healthSummary(p: HealthPoint): HealthSummary {
  const { ts, cpuPct, load1, tempC, memUsedBytes, memTotalBytes } = p;
  const gpus = p.gpus.map((g) => ({
    name: g.name,
    utilPct: g.utilPct ?? null,
    memUsedBytes: g.memUsedBytes ?? null,
    memTotalBytes: g.memTotalBytes ?? null,
    tempC: g.tempC ?? null,
  }));
  return { ts, cpuPct, load1, tempC, memUsedBytes, memTotalBytes, gpus };
}

/**
 * Series samples from points-table rows, oldest first. `data` (the point's
 * JSON) is read only for health points (outbox figures) and 'dropped' points;
 * the stores select it for those kinds alone.
 */
export function toSeries(device: string, rows: readonly PointRow[]): DeviceSeries {
  const series: DeviceSeries = { device, inference: [], health: [], dropped: [] };
  for (const r of [...rows].sort((a, b) => a.ts - b.ts || a.seq - b.seq)) {
    const ts = formatTime(r.ts);
    if (r.kind === 'inference') {
      series.inference.push({ ts, model: r.model ?? '', version: r.version ?? 0, count: r.count ?? 0, errors: r.errors ?? 0, p50: r.p50, p99: r.p99 });
    } else if (r.kind === 'health') {
      const p = r.data === '' ? undefined : (JSON.parse(r.data) as Partial<HealthPoint>);
      series.health.push({
        ts, cpuPct: r.cpuPct ?? 0, tempC: r.tempC, memUsedBytes: r.memUsed ?? 0, memTotalBytes: r.memTotal ?? 0,
        ...(p?.outboxRows !== undefined && { outboxRows: p.outboxRows, outboxBytes: p.outboxBytes ?? 0 }),
      });
    } else if (r.kind === 'dropped' && r.data !== '') {
      const p = JSON.parse(r.data) as Partial<DroppedPoint>;
      series.dropped.push({ ts, count: r.count ?? 0, oldestSeq: p.oldestSeq ?? 0, newestSeq: p.newestSeq ?? 0, reason: p.reason ?? '' });
    }
  }
  return series;
}

/** An events-table row as the event the device sent. */
export function storedEvent(
  device: string,
  r: { ts: number | Date; type: string; model: string | null; version: number | null; detail: string | null },
): StoredEvent {
  return {
    device,
    ts: formatTime(r.ts),
    type: r.type,
    ...(r.model !== null && { model: r.model }),
    ...(r.version !== null && { version: Number(r.version) }),
    ...(r.detail !== null && { detail: r.detail }),
  };
}
