/**
 * The embedded store: one SQLite file in WAL mode with synchronous=FULL, so a
 * point the collector acknowledged to the broker survives a power cut.
 * Several collectors on one host may share the file (busy_timeout).
 */
import { existsSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { openSqlite } from '../../lib/sqlite.js';
import { SQLITE_ALERT_MIGRATION, sqliteAlerts, type AlertRecords } from './alert-records.js';
import { SQLITE_ROLLOUT_MIGRATION, sqliteRollouts, type RolloutRecords } from './rollout-records.js';
import type { DeviceEvent, ReportedState, Status, TelemetryPoint } from '../../protocol/index.js';
import { FailureError } from '../errors.js';
import type {
  AckPoint,
  DeviceCountsRecord,
  DeviceSeries,
  DeviceState,
  FleetFilters,
  FleetPageQuery,
  FleetPageResult,
  FleetPageSort,
  FleetRow,
  FleetStore,
  LatestRow,
  PointRow,
  QuarantineEntry,
  StatusRecord,
  StoredEvent,
  TimeRange,
} from './store.js';
import { ACK_WALK_LIMIT, DEFAULT_SERIES_LIMIT, advanceAck, walkGoesOn, assembleFleet, checkFleetPageQuery, deviceStatesOf, droppedOf, inPageOrder, eventHash, latestRows, millis, pointRow, storedEvent, toSeries } from './store.js';

/** Append-only: entry N takes the file from user_version N to N+1. */
export const SQLITE_MIGRATIONS: readonly string[] = [
  `CREATE TABLE fleet_points (
     device TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, kind TEXT NOT NULL,
     model TEXT, version INTEGER, count INTEGER, errors INTEGER, p50 REAL, p99 REAL,
     cpu_pct REAL, temp_c REAL, mem_used INTEGER, mem_total INTEGER, data TEXT NOT NULL,
     PRIMARY KEY (device, seq)
   ) WITHOUT ROWID;
   CREATE INDEX fleet_points_ts ON fleet_points (ts);
   CREATE INDEX fleet_points_device_ts ON fleet_points (device, ts);
   CREATE TABLE fleet_latest (
     device TEXT NOT NULL, slot TEXT NOT NULL, ts INTEGER NOT NULL, data TEXT NOT NULL,
     PRIMARY KEY (device, slot)
   ) WITHOUT ROWID;
   CREATE TABLE fleet_status (
     device TEXT PRIMARY KEY, online INTEGER NOT NULL, ts INTEGER, received_at INTEGER NOT NULL
   );
   CREATE TABLE fleet_state (
     device TEXT PRIMARY KEY, ts INTEGER NOT NULL, doc TEXT NOT NULL, received_at INTEGER NOT NULL
   );
   CREATE TABLE fleet_events (
     device TEXT NOT NULL, ts INTEGER NOT NULL, hash TEXT NOT NULL, type TEXT NOT NULL,
     model TEXT, version INTEGER, detail TEXT,
     PRIMARY KEY (device, ts, hash)
   ) WITHOUT ROWID;
   CREATE INDEX fleet_events_ts ON fleet_events (ts);`,
  // Issue 13: arrival times (retention and "last seen" go by them), per-device counters and the acknowledged prefix, quarantine.
  `ALTER TABLE fleet_points ADD COLUMN received_at INTEGER;
   CREATE INDEX fleet_points_received ON fleet_points (received_at);
   ALTER TABLE fleet_events ADD COLUMN received_at INTEGER;
   CREATE INDEX fleet_events_received ON fleet_events (received_at);
   ALTER TABLE fleet_latest ADD COLUMN received_at INTEGER;
   CREATE TABLE fleet_devices (
     device TEXT PRIMARY KEY, ack_up_to INTEGER,
     quarantined INTEGER NOT NULL DEFAULT 0, over_quota INTEGER NOT NULL DEFAULT 0, clock_skewed INTEGER NOT NULL DEFAULT 0,
     dropped INTEGER NOT NULL DEFAULT 0, dropped_last_at INTEGER
   );
   CREATE TABLE fleet_quarantine (
     id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, topic TEXT NOT NULL, received_at INTEGER NOT NULL,
     reason TEXT NOT NULL, size INTEGER NOT NULL, excerpt BLOB NOT NULL
   );
   CREATE INDEX fleet_quarantine_received ON fleet_quarantine (received_at);`,
  // Issue 13 item 5: the fleet table's sort keys per device, kept at write time, so a page is an indexed ORDER BY/LIMIT.
  `ALTER TABLE fleet_devices ADD COLUMN online INTEGER;
   ALTER TABLE fleet_devices ADD COLUMN last_seen INTEGER;
   ALTER TABLE fleet_devices ADD COLUMN errors INTEGER;
   ALTER TABLE fleet_devices ADD COLUMN p99 REAL;
   INSERT OR IGNORE INTO fleet_devices (device)
     SELECT device FROM fleet_status UNION SELECT device FROM fleet_state UNION SELECT device FROM fleet_latest;
   UPDATE fleet_devices SET
     online = (SELECT online FROM fleet_status s WHERE s.device = fleet_devices.device),
     last_seen = NULLIF(max(
       COALESCE((SELECT received_at FROM fleet_status s WHERE s.device = fleet_devices.device), 0),
       COALESCE((SELECT received_at FROM fleet_state s WHERE s.device = fleet_devices.device), 0),
       COALESCE((SELECT max(COALESCE(received_at, ts)) FROM fleet_latest l WHERE l.device = fleet_devices.device), 0)), 0),
     errors = (SELECT sum(json_extract(data, '$.errors')) FROM fleet_latest l WHERE l.device = fleet_devices.device AND slot LIKE 'inference/%'),
     p99 = (SELECT max(json_extract(data, '$.latencyMs.p99')) FROM fleet_latest l WHERE l.device = fleet_devices.device AND slot LIKE 'inference/%');
   CREATE INDEX fleet_devices_last_seen ON fleet_devices (last_seen, device);
   CREATE INDEX fleet_devices_online ON fleet_devices (online, device);
   CREATE INDEX fleet_devices_errors ON fleet_devices (errors, device);
   CREATE INDEX fleet_devices_p99 ON fleet_devices (p99, device);
   CREATE INDEX fleet_devices_dropped ON fleet_devices (dropped, device);`,
  // Issue 14: staged rollouts, the documents published for them, the controller's lease.
  SQLITE_ROLLOUT_MIGRATION,
  // Issue 15: the built-in alert evaluator's alerts and webhook outbox.
  SQLITE_ALERT_MIGRATION,
];

/** The fleet_devices column each sort orders by. */
const SORT_COLUMN: Record<FleetPageSort, string> = {
  device: 'd.device',
  lastSeen: 'd.last_seen',
  online: 'd.online',
  errors: 'd.errors',
  p99: 'd.p99',
  dropped: 'd.dropped',
};

/** WHERE clause and parameters of a fleet page (SQLite dialect). */
function pageFilter(q: FleetPageQuery): { where: string; params: unknown[] } {
  const terms: string[] = [];
  const params: unknown[] = [];
  if (q.group !== undefined) {
    terms.push(`EXISTS (SELECT 1 FROM fleet_state s, json_each(s.doc, '$.groups') g WHERE s.device = d.device AND g.value = ?)`);
    params.push(q.group);
  }
  if (q.model !== undefined) {
    terms.push(`(EXISTS (SELECT 1 FROM fleet_latest l WHERE l.device = d.device AND l.slot = ?)
      OR EXISTS (SELECT 1 FROM fleet_state s, json_each(s.doc, '$.models') m WHERE s.device = d.device AND json_extract(m.value, '$.name') = ?))`);
    params.push(`inference/${q.model}`, q.model);
  }
  if (q.online !== undefined) terms.push(q.online ? 'd.online = 1' : '(d.online IS NULL OR d.online = 0)');
  if (q.errors !== undefined) terms.push(q.errors ? 'd.errors > 0' : 'COALESCE(d.errors, 0) = 0');
  if (q.minP99 !== undefined) {
    terms.push('d.p99 >= ?');
    params.push(q.minP99);
  }
  if (q.search !== undefined) {
    terms.push('instr(lower(d.device), ?) > 0');
    params.push(q.search);
  }
  return { where: terms.length === 0 ? '' : `WHERE ${terms.join(' AND ')}`, params };
}

const POINT_COLUMNS = `device, seq, ts, kind, model, version, count, errors, p50, p99,
  cpu_pct AS cpuPct, temp_c AS tempC, mem_used AS memUsed, mem_total AS memTotal,
  CASE WHEN kind IN ('health', 'dropped') THEN data ELSE '' END AS data`;

type StateFilter = { group: string | null; model: string | null };
type Range = [device: string, from: number, to: number, limit: number];
type EventRow = { ts: number; type: string; model: string | null; version: number | null; detail: string | null };

/** Every statement the store runs, prepared once when it opens. */
function prepareStatements(db: Database.Database) {
  return {
    insertPoint: db.prepare<PointRow & { receivedAt: number }>(
      `INSERT INTO fleet_points (device, seq, ts, kind, model, version, count, errors, p50, p99, cpu_pct, temp_c, mem_used, mem_total, data, received_at)
       VALUES (@device, @seq, @ts, @kind, @model, @version, @count, @errors, @p50, @p99, @cpuPct, @tempC, @memUsed, @memTotal, @data, @receivedAt)
       ON CONFLICT (device, seq) DO NOTHING`,
    ),
    upsertLatest: db.prepare<LatestRow>(
      `INSERT INTO fleet_latest (device, slot, ts, data, received_at) VALUES (@device, @slot, @ts, @data, @receivedAt)
       ON CONFLICT (device, slot) DO UPDATE SET ts = excluded.ts, data = excluded.data, received_at = excluded.received_at
       WHERE excluded.ts > fleet_latest.ts`,
    ),
    addDropped: db.prepare<[string, number, number]>(
      `INSERT INTO fleet_devices (device, dropped, dropped_last_at) VALUES (?, ?, ?)
       ON CONFLICT (device) DO UPDATE SET dropped = dropped + excluded.dropped,
         dropped_last_at = max(COALESCE(dropped_last_at, 0), excluded.dropped_last_at)`,
    ),
    addCounts: db.prepare<[string, number, number, number]>(
      `INSERT INTO fleet_devices (device, quarantined, over_quota, clock_skewed) VALUES (?, ?, ?, ?)
       ON CONFLICT (device) DO UPDATE SET quarantined = quarantined + excluded.quarantined,
         over_quota = over_quota + excluded.over_quota, clock_skewed = clock_skewed + excluded.clock_skewed`,
    ),
    ackRow: db.prepare<[string], { upTo: number | null }>('SELECT ack_up_to AS upTo FROM fleet_devices WHERE device = ?'),
    ackAbove: db.prepare<[string, number, number], AckPoint>(
      `SELECT seq,
         CASE WHEN kind = 'dropped' THEN json_extract(data, '$.oldestSeq') END AS oldestSeq,
         CASE WHEN kind = 'dropped' THEN json_extract(data, '$.newestSeq') END AS newestSeq
       FROM fleet_points WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?`,
    ),
    setAck: db.prepare<[string, number]>(
      `INSERT INTO fleet_devices (device, ack_up_to) VALUES (?, ?)
       ON CONFLICT (device) DO UPDATE SET ack_up_to = max(COALESCE(ack_up_to, excluded.ack_up_to), excluded.ack_up_to)`,
    ),
    seen: db.prepare<[string, number]>(
      `INSERT INTO fleet_devices (device, last_seen) VALUES (?, ?)
       ON CONFLICT (device) DO UPDATE SET last_seen = max(COALESCE(last_seen, 0), excluded.last_seen)`,
    ),
    seenStatus: db.prepare<[string, number, number]>(
      `INSERT INTO fleet_devices (device, online, last_seen) VALUES (?, ?, ?)
       ON CONFLICT (device) DO UPDATE SET online = excluded.online, last_seen = max(COALESCE(last_seen, 0), excluded.last_seen)`,
    ),
    inferenceSummary: db.prepare<{ device: string }>(
      `UPDATE fleet_devices SET
         errors = (SELECT sum(json_extract(data, '$.errors')) FROM fleet_latest WHERE device = @device AND slot LIKE 'inference/%'),
         p99 = (SELECT max(json_extract(data, '$.latencyMs.p99')) FROM fleet_latest WHERE device = @device AND slot LIKE 'inference/%')
       WHERE device = @device`,
    ),
    statusesIn: db.prepare<[string], { device: string; online: number; receivedAt: number }>(
      'SELECT device, online, received_at AS receivedAt FROM fleet_status WHERE device IN (SELECT value FROM json_each(?))',
    ),
    statesIn: db.prepare<[string], { device: string; doc: string; receivedAt: number }>(
      'SELECT device, doc, received_at AS receivedAt FROM fleet_state WHERE device IN (SELECT value FROM json_each(?))',
    ),
    latestIn: db.prepare<[string], LatestRow>(
      'SELECT device, slot, ts, COALESCE(received_at, ts) AS receivedAt, data FROM fleet_latest WHERE device IN (SELECT value FROM json_each(?))',
    ),
    countsIn: db.prepare<[string], DeviceCountsRecord>(
      `SELECT device, quarantined, over_quota AS overQuota, clock_skewed AS clockSkewed, dropped, dropped_last_at AS droppedLastAt
       FROM fleet_devices WHERE device IN (SELECT value FROM json_each(?))`,
    ),
    counts: db.prepare<[], DeviceCountsRecord>(
      `SELECT device, quarantined, over_quota AS overQuota, clock_skewed AS clockSkewed, dropped, dropped_last_at AS droppedLastAt
       FROM fleet_devices`,
    ),
    quarantine: db.prepare<[string, string, number, string, number, Buffer]>(
      'INSERT INTO fleet_quarantine (device, topic, received_at, reason, size, excerpt) VALUES (?, ?, ?, ?, ?, ?)',
    ),
    quarantined: db.prepare<[number], QuarantineEntry>(
      'SELECT device, topic, received_at AS receivedAt, reason, size, excerpt FROM fleet_quarantine ORDER BY id DESC LIMIT ?',
    ),
    deviceModels: db.prepare<[string], { slot: string }>(
      "SELECT slot FROM fleet_latest WHERE device = ? AND slot LIKE 'inference/%'",
    ),
    upsertStatus: db.prepare<[string, number, number | null, number]>(
      `INSERT INTO fleet_status (device, online, ts, received_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (device) DO UPDATE SET online = excluded.online, ts = excluded.ts, received_at = excluded.received_at`,
    ),
    upsertState: db.prepare<[string, number, string, number]>(
      `INSERT INTO fleet_state (device, ts, doc, received_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (device) DO UPDATE SET ts = excluded.ts, doc = excluded.doc, received_at = excluded.received_at
       WHERE excluded.ts >= fleet_state.ts`,
    ),
    insertEvent: db.prepare<[string, number, string, string, string | null, number | null, string | null, number]>(
      `INSERT INTO fleet_events (device, ts, hash, type, model, version, detail, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (device, ts, hash) DO NOTHING`,
    ),
    // Rows from before arrival times were kept go by their own time.
    prunePoints: db.prepare<[number, number]>('DELETE FROM fleet_points WHERE received_at < ? OR (received_at IS NULL AND ts < ?)'),
    pruneEvents: db.prepare<[number, number]>('DELETE FROM fleet_events WHERE received_at < ? OR (received_at IS NULL AND ts < ?)'),
    pruneQuarantine: db.prepare<[number]>('DELETE FROM fleet_quarantine WHERE received_at < ?'),
    states: db.prepare<StateFilter, { device: string; doc: string; receivedAt: number }>(
      `SELECT device, doc, received_at AS receivedAt FROM fleet_state
       WHERE (@group IS NULL OR EXISTS (SELECT 1 FROM json_each(doc, '$.groups') WHERE value = @group))
         AND (@model IS NULL OR EXISTS (SELECT 1 FROM json_each(doc, '$.models') WHERE json_extract(value, '$.name') = @model))`,
    ),
    statuses: db.prepare<[], { device: string; online: number; receivedAt: number }>(
      'SELECT device, online, received_at AS receivedAt FROM fleet_status',
    ),
    latest: db.prepare<[], LatestRow>('SELECT device, slot, ts, COALESCE(received_at, ts) AS receivedAt, data FROM fleet_latest'),
    series: db.prepare<Range, PointRow>(
      `SELECT ${POINT_COLUMNS} FROM fleet_points WHERE device = ? AND ts BETWEEN ? AND ? ORDER BY ts DESC, seq DESC LIMIT ?`,
    ),
    events: db.prepare<Range, EventRow>(
      'SELECT ts, type, model, version, detail FROM fleet_events WHERE device = ? AND ts BETWEEN ? AND ? ORDER BY ts DESC LIMIT ?',
    ),
  };
}

export class SqliteStore implements FleetStore {
  readonly kind = 'sqlite';
  private database: Database.Database | undefined;
  private statements: ReturnType<typeof prepareStatements> | undefined;
  private records: RolloutRecords | undefined;
  private alertRecords: AlertRecords | undefined;

  /** `mustExist`: fail instead of creating an empty database (for readers such as `edgefleet status`). */
  constructor(
    readonly file: string,
    private readonly options: { mustExist?: boolean } = {},
  ) {}

  private get sql(): ReturnType<typeof prepareStatements> {
    if (this.statements === undefined) throw new Error('SqliteStore used before init()');
    return this.statements;
  }

  get rollouts(): RolloutRecords {
    if (this.records === undefined) throw new Error('SqliteStore used before init()');
    return this.records;
  }

  get alerts(): AlertRecords {
    if (this.alertRecords === undefined) throw new Error('SqliteStore used before init()');
    return this.alertRecords;
  }

  async init(): Promise<void> {
    if (this.database !== undefined) return;
    if (this.options.mustExist && !existsSync(this.file)) {
      throw new FailureError(`no collector database at ${this.file}: start 'edgefleet collect' first or pass --db`);
    }
    this.database = openSqlite(this.file, { migrations: SQLITE_MIGRATIONS, owner: 'collector' });
    this.statements = prepareStatements(this.database);
    this.records = sqliteRollouts(this.database);
    this.alertRecords = sqliteAlerts(this.database);
  }

  private transaction<T>(fn: () => T): T {
    if (this.database === undefined) throw new Error('SqliteStore used before init()');
    return this.database.transaction(fn)();
  }

  private queued: { fn: () => unknown; resolve: (value: unknown) => void; reject: (err: unknown) => void }[] = [];

  /**
   * Group commit: writes asked for in the same turn of the event loop (the
   * collector's sessions each bring one message at a time) run in one
   * transaction, so one fsync covers them all. Each runs in a savepoint of
   * its own: one that fails (a row refused for good) rolls back alone and
   * rejects its caller; a failed commit rejects every one of them, and none
   * of their messages is acknowledged.
   */
  private write<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queued.push({ fn, resolve: resolve as (value: unknown) => void, reject });
      if (this.queued.length === 1) setImmediate(() => this.commitQueued());
    });
  }

  private commitQueued(): void {
    const ops = this.queued.splice(0);
    const db = this.database;
    if (db === undefined) {
      for (const op of ops) op.reject(new Error('SqliteStore used before init()'));
      return;
    }
    const results: ({ ok: true; value: unknown } | { ok: false; err: unknown })[] = [];
    try {
      db.transaction(() => {
        for (const op of ops) {
          try {
            results.push({ ok: true, value: db.transaction(op.fn)() });
          } catch (err) {
            results.push({ ok: false, err });
          }
        }
      }).immediate();
    } catch (err) {
      for (const op of ops) op.reject(err);
      return;
    }
    ops.forEach((op, i) => {
      const r = results[i];
      if (r?.ok) op.resolve(r.value);
      else op.reject(r?.err);
    });
  }

  async insertPoints(device: string, points: readonly TelemetryPoint[], receivedAt?: number): Promise<number> {
    const { insertPoint, upsertLatest, addDropped, seen, inferenceSummary } = this.sql;
    return this.write(() => {
      const fresh: TelemetryPoint[] = [];
      for (const p of points) {
        const row = pointRow(device, p);
        if (insertPoint.run({ ...row, receivedAt: receivedAt ?? row.ts }).changes > 0) fresh.push(p);
      }
      // The summary follows what the latest table keeps: last seen, and errors and worst p99 over the models' last intervals.
      let lastSeen = 0;
      let inference = false;
      for (const row of latestRows(device, points, receivedAt)) {
        if (upsertLatest.run(row).changes === 0) continue;
        lastSeen = Math.max(lastSeen, row.receivedAt);
        inference ||= row.slot.startsWith('inference/');
      }
      if (lastSeen > 0) seen.run(device, lastSeen);
      if (inference) inferenceSummary.run({ device });
      const dropped = droppedOf(fresh, receivedAt);
      if (dropped !== undefined) addDropped.run(device, dropped.count, dropped.lastAt);
      return fresh.length;
    });
  }

  async acknowledge(firstSeqs: ReadonlyMap<string, number>): Promise<Map<string, number>> {
    const { ackRow, ackAbove, setAck } = this.sql;
    return this.write(() => {
      const acked = new Map<string, number>();
      for (const [device, firstSeq] of firstSeqs) {
        let upTo = ackRow.get(device)?.upTo ?? firstSeq - 1;
        // A walk that read its whole limit and passed it all goes on from there.
        for (let more = true; more; ) {
          const above = ackAbove.all(device, upTo, ACK_WALK_LIMIT);
          upTo = advanceAck(upTo, above);
          more = walkGoesOn(above, upTo);
        }
        setAck.run(device, upTo);
        acked.set(device, ackRow.get(device)?.upTo ?? upTo);
      }
      return acked;
    });
  }

  async quarantine(entry: QuarantineEntry): Promise<void> {
    const { quarantine } = this.sql;
    await this.write(() => quarantine.run(entry.device, entry.topic, entry.receivedAt, entry.reason, entry.size, entry.excerpt));
  }

  async quarantined(limit: number): Promise<QuarantineEntry[]> {
    return this.sql.quarantined.all(limit);
  }

  async addCounts(counts: ReadonlyMap<string, { quarantined: number; overQuota: number; clockSkewed: number }>): Promise<void> {
    const { addCounts } = this.sql;
    await this.write(() => {
      for (const [device, c] of counts) addCounts.run(device, c.quarantined, c.overQuota, c.clockSkewed);
    });
  }

  async deviceModels(device: string): Promise<string[]> {
    return this.sql.deviceModels.all(device).map((r) => r.slot.slice('inference/'.length));
  }

  async upsertStatus(device: string, status: Status, receivedAt: number): Promise<void> {
    const { upsertStatus, seenStatus } = this.sql;
    await this.write(() => {
      upsertStatus.run(device, status.online ? 1 : 0, status.ts === undefined ? null : millis(status.ts), receivedAt);
      seenStatus.run(device, status.online ? 1 : 0, receivedAt);
    });
  }

  async upsertState(state: ReportedState, receivedAt: number): Promise<void> {
    const { upsertState, seen } = this.sql;
    await this.write(() => {
      if (upsertState.run(state.device, millis(state.ts), JSON.stringify(state), receivedAt).changes > 0) seen.run(state.device, receivedAt);
    });
  }

  async insertEvent(device: string, event: DeviceEvent, receivedAt?: number): Promise<boolean> {
    const { model = null, version = null, detail = null } = event;
    const ts = millis(event.ts);
    const { insertEvent } = this.sql;
    return this.write(() => insertEvent.run(device, ts, eventHash(event), event.type, model, version, detail, receivedAt ?? ts).changes > 0);
  }

  async prune(before: number): Promise<{ points: number; events: number }> {
    const { prunePoints, pruneEvents, pruneQuarantine } = this.sql;
    return this.transaction(() => {
      pruneQuarantine.run(before);
      return { points: prunePoints.run(before, before).changes, events: pruneEvents.run(before, before).changes };
    });
  }

  async fleetStatus(filters: FleetFilters = {}): Promise<FleetRow[]> {
    const states = this.sql.states
      .all({ group: filters.group ?? null, model: filters.model ?? null })
      .map((r) => ({ device: r.device, state: JSON.parse(r.doc) as ReportedState, receivedAt: r.receivedAt }));
    const statuses = this.sql.statuses.all().map((r): StatusRecord => ({ device: r.device, online: r.online === 1, receivedAt: r.receivedAt }));
    const filtered = filters.group !== undefined || filters.model !== undefined;
    return assembleFleet(statuses, states, this.sql.latest.all(), this.sql.counts.all(), filtered ? new Set(states.map((s) => s.device)) : undefined);
  }

  async fleetPage(query: FleetPageQuery): Promise<FleetPageResult> {
    const q = checkFleetPageQuery(query);
    const db = this.database;
    if (db === undefined) throw new Error('SqliteStore used before init()');
    const { where, params } = pageFilter(q);
    const order = q.sort === 'device' ? `d.device ${q.desc ? 'DESC' : 'ASC'}` : `${SORT_COLUMN[q.sort]} ${q.desc ? 'DESC' : 'ASC'} NULLS LAST, d.device`;
    const { statusesIn, statesIn, latestIn, countsIn } = this.sql;
    // One read transaction: the count, the page and its rows see the same data (another collector may share the file).
    return this.transaction((): FleetPageResult => {
      const totals = db.prepare(`SELECT count(*) AS total, COALESCE(sum(d.online = 1), 0) AS online FROM fleet_devices d ${where}`).get(...params) as {
        total: number;
        online: number;
      };
      const page = db.prepare(`SELECT d.device FROM fleet_devices d ${where} ORDER BY ${order} LIMIT ? OFFSET ?`).all(...params, q.limit, q.offset) as { device: string }[];
      const devices = page.map((r) => r.device);
      if (devices.length === 0) return { total: totals.total, online: totals.online, rows: [] };
      const ids = JSON.stringify(devices);
      const rows = assembleFleet(
        statusesIn.all(ids).map((r): StatusRecord => ({ device: r.device, online: r.online === 1, receivedAt: r.receivedAt })),
        statesIn.all(ids).map((r) => ({ device: r.device, state: JSON.parse(r.doc) as ReportedState, receivedAt: r.receivedAt })),
        latestIn.all(ids),
        countsIn.all(ids),
      );
      return { total: totals.total, online: totals.online, rows: inPageOrder(devices, rows) };
    });
  }

  async deviceStates(devices: readonly string[]): Promise<DeviceState[]> {
    if (devices.length === 0) return [];
    const ids = JSON.stringify(devices);
    const { statusesIn, statesIn } = this.sql;
    return this.transaction(() =>
      deviceStatesOf(
        statusesIn.all(ids).map((r) => ({ device: r.device, online: r.online === 1 })),
        statesIn.all(ids).map((r) => ({ device: r.device, state: JSON.parse(r.doc) as ReportedState })),
      ),
    );
  }

  async series(device: string, range: TimeRange): Promise<DeviceSeries> {
    return toSeries(device, this.sql.series.all(device, range.from, range.to, range.limit ?? DEFAULT_SERIES_LIMIT));
  }

  async events(device: string, range: TimeRange): Promise<StoredEvent[]> {
    const rows = this.sql.events.all(device, range.from, range.to, range.limit ?? DEFAULT_SERIES_LIMIT);
    return rows.reverse().map((r) => storedEvent(device, r));
  }

  async close(): Promise<void> {
    if (this.queued.length > 0) this.commitQueued();
    this.statements = undefined;
    if (this.database?.open) this.database.close();
  }
}
