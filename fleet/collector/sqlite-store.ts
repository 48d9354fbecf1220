/**
 * The embedded store: one SQLite file in WAL mode with synchronous=FULL, so a
 * point the collector acknowledged to the broker survives a power cut.
 * Several collectors on one host may share the file (busy_timeout).
 */
import { existsSync } from 'node:fs';
import type Database from 'better-sqlite3';
import { openSqlite } from '../../lib/sqlite.js';
import type { DeviceEvent, ReportedState, Status, TelemetryPoint } from '../../protocol/index.js';
import { FailureError } from '../errors.js';
import type {
  AckPoint,
  DeviceCountsRecord,
  DeviceSeries,
  FleetFilters,
  FleetRow,
  FleetStore,
  LatestRow,
  PointRow,
  QuarantineEntry,
  StatusRecord,
  StoredEvent,
  TimeRange,
} from './store.js';
import { ACK_WALK_LIMIT, DEFAULT_SERIES_LIMIT, advanceAck, assembleFleet, droppedOf, eventHash, latestRows, millis, pointRow, storedEvent, toSeries } from './store.js';

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
];

const POINT_COLUMNS = `device, seq, ts, kind, model, version, count, errors, p50, p99,
  cpu_pct AS cpuPct, temp_c AS tempC, mem_used AS memUsed, mem_total AS memTotal, '' AS data`;

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

  /** `mustExist`: fail instead of creating an empty database (for readers such as `edgefleet status`). */
  constructor(
    readonly file: string,
    private readonly options: { mustExist?: boolean } = {},
  ) {}

  private get sql(): ReturnType<typeof prepareStatements> {
    if (this.statements === undefined) throw new Error('SqliteStore used before init()');
    return this.statements;
  }

  async init(): Promise<void> {
    if (this.database !== undefined) return;
    if (this.options.mustExist && !existsSync(this.file)) {
      throw new FailureError(`no collector database at ${this.file}: start 'edgefleet collect' first or pass --db`);
    }
    this.database = openSqlite(this.file, { migrations: SQLITE_MIGRATIONS, owner: 'collector' });
    this.statements = prepareStatements(this.database);
  }

  private transaction<T>(fn: () => T): T {
    if (this.database === undefined) throw new Error('SqliteStore used before init()');
    return this.database.transaction(fn)();
  }

  async insertPoints(device: string, points: readonly TelemetryPoint[], receivedAt?: number): Promise<number> {
    const { insertPoint, upsertLatest, addDropped } = this.sql;
    return this.transaction(() => {
      const fresh: TelemetryPoint[] = [];
      for (const p of points) {
        const row = pointRow(device, p);
        if (insertPoint.run({ ...row, receivedAt: receivedAt ?? row.ts }).changes > 0) fresh.push(p);
      }
      for (const row of latestRows(device, points, receivedAt)) upsertLatest.run(row);
      const dropped = droppedOf(fresh, receivedAt);
      if (dropped !== undefined) addDropped.run(device, dropped.count, dropped.lastAt);
      return fresh.length;
    });
  }

  async acknowledge(device: string, firstSeq: number): Promise<number> {
    const { ackRow, ackAbove, setAck } = this.sql;
    return this.transaction(() => {
      const from = ackRow.get(device)?.upTo ?? firstSeq - 1;
      const upTo = advanceAck(from, ackAbove.all(device, from, ACK_WALK_LIMIT));
      setAck.run(device, upTo);
      return ackRow.get(device)?.upTo ?? upTo;
    });
  }

  async quarantine(entry: QuarantineEntry): Promise<void> {
    this.sql.quarantine.run(entry.device, entry.topic, entry.receivedAt, entry.reason, entry.size, entry.excerpt);
  }

  async quarantined(limit: number): Promise<QuarantineEntry[]> {
    return this.sql.quarantined.all(limit);
  }

  async addCounts(counts: ReadonlyMap<string, { quarantined: number; overQuota: number; clockSkewed: number }>): Promise<void> {
    const { addCounts } = this.sql;
    this.transaction(() => {
      for (const [device, c] of counts) addCounts.run(device, c.quarantined, c.overQuota, c.clockSkewed);
    });
  }

  async deviceModels(device: string): Promise<string[]> {
    return this.sql.deviceModels.all(device).map((r) => r.slot.slice('inference/'.length));
  }

  async upsertStatus(device: string, status: Status, receivedAt: number): Promise<void> {
    this.sql.upsertStatus.run(device, status.online ? 1 : 0, status.ts === undefined ? null : millis(status.ts), receivedAt);
  }

  async upsertState(state: ReportedState, receivedAt: number): Promise<void> {
    this.sql.upsertState.run(state.device, millis(state.ts), JSON.stringify(state), receivedAt);
  }

  async insertEvent(device: string, event: DeviceEvent, receivedAt?: number): Promise<boolean> {
    const { model = null, version = null, detail = null } = event;
    const ts = millis(event.ts);
    return this.sql.insertEvent.run(device, ts, eventHash(event), event.type, model, version, detail, receivedAt ?? ts).changes > 0;
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

  async series(device: string, range: TimeRange): Promise<DeviceSeries> {
    return toSeries(device, this.sql.series.all(device, range.from, range.to, range.limit ?? DEFAULT_SERIES_LIMIT));
  }

  async events(device: string, range: TimeRange): Promise<StoredEvent[]> {
    const rows = this.sql.events.all(device, range.from, range.to, range.limit ?? DEFAULT_SERIES_LIMIT);
    return rows.reverse().map((r) => storedEvent(device, r));
  }

  async close(): Promise<void> {
    this.statements = undefined;
    if (this.database?.open) this.database.close();
  }
}
