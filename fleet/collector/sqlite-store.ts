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
import type { DeviceSeries, FleetFilters, FleetRow, FleetStore, LatestRow, PointRow, StatusRecord, StoredEvent, TimeRange } from './store.js';
import { DEFAULT_SERIES_LIMIT, assembleFleet, eventHash, latestRows, millis, pointRow, storedEvent, toSeries } from './store.js';

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
];

const POINT_COLUMNS = `device, seq, ts, kind, model, version, count, errors, p50, p99,
  cpu_pct AS cpuPct, temp_c AS tempC, mem_used AS memUsed, mem_total AS memTotal, '' AS data`;

type StateFilter = { group: string | null; model: string | null };
type Range = [device: string, from: number, to: number, limit: number];
type EventRow = { ts: number; type: string; model: string | null; version: number | null; detail: string | null };

/** Every statement the store runs, prepared once when it opens. */
function prepareStatements(db: Database.Database) {
  return {
    insertPoint: db.prepare<PointRow>(
      `INSERT INTO fleet_points (device, seq, ts, kind, model, version, count, errors, p50, p99, cpu_pct, temp_c, mem_used, mem_total, data)
       VALUES (@device, @seq, @ts, @kind, @model, @version, @count, @errors, @p50, @p99, @cpuPct, @tempC, @memUsed, @memTotal, @data)
       ON CONFLICT (device, seq) DO NOTHING`,
    ),
    upsertLatest: db.prepare<LatestRow>(
      `INSERT INTO fleet_latest (device, slot, ts, data) VALUES (@device, @slot, @ts, @data)
       ON CONFLICT (device, slot) DO UPDATE SET ts = excluded.ts, data = excluded.data WHERE excluded.ts > fleet_latest.ts`,
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
    insertEvent: db.prepare<[string, number, string, string, string | null, number | null, string | null]>(
      `INSERT INTO fleet_events (device, ts, hash, type, model, version, detail) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (device, ts, hash) DO NOTHING`,
    ),
    prunePoints: db.prepare<[number]>('DELETE FROM fleet_points WHERE ts < ?'),
    pruneEvents: db.prepare<[number]>('DELETE FROM fleet_events WHERE ts < ?'),
    states: db.prepare<StateFilter, { device: string; doc: string }>(
      `SELECT device, doc FROM fleet_state
       WHERE (@group IS NULL OR EXISTS (SELECT 1 FROM json_each(doc, '$.groups') WHERE value = @group))
         AND (@model IS NULL OR EXISTS (SELECT 1 FROM json_each(doc, '$.models') WHERE json_extract(value, '$.name') = @model))`,
    ),
    statuses: db.prepare<[], { device: string; online: number; ts: number }>(
      'SELECT device, online, COALESCE(ts, received_at) AS ts FROM fleet_status',
    ),
    latest: db.prepare<[], LatestRow>('SELECT device, slot, ts, data FROM fleet_latest'),
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

  async insertPoints(device: string, points: readonly TelemetryPoint[]): Promise<number> {
    const { insertPoint, upsertLatest } = this.sql;
    return this.transaction(() => {
      let added = 0;
      for (const p of points) added += insertPoint.run(pointRow(device, p)).changes;
      for (const row of latestRows(device, points)) upsertLatest.run(row);
      return added;
    });
  }

  async upsertStatus(device: string, status: Status, receivedAt: number): Promise<void> {
    this.sql.upsertStatus.run(device, status.online ? 1 : 0, status.ts === undefined ? null : millis(status.ts), receivedAt);
  }

  async upsertState(state: ReportedState, receivedAt: number): Promise<void> {
    this.sql.upsertState.run(state.device, millis(state.ts), JSON.stringify(state), receivedAt);
  }

  async insertEvent(device: string, event: DeviceEvent): Promise<boolean> {
    const { model = null, version = null, detail = null } = event;
    return this.sql.insertEvent.run(device, millis(event.ts), eventHash(event), event.type, model, version, detail).changes > 0;
  }

  async prune(before: number): Promise<{ points: number; events: number }> {
    const { prunePoints, pruneEvents } = this.sql;
    return this.transaction(() => ({ points: prunePoints.run(before).changes, events: pruneEvents.run(before).changes }));
  }

  async fleetStatus(filters: FleetFilters = {}): Promise<FleetRow[]> {
    const states = this.sql.states
      .all({ group: filters.group ?? null, model: filters.model ?? null })
      .map((r) => ({ device: r.device, state: JSON.parse(r.doc) as ReportedState }));
    const statuses = this.sql.statuses.all().map((r): StatusRecord => ({ device: r.device, online: r.online === 1, ts: r.ts }));
    const filtered = filters.group !== undefined || filters.model !== undefined;
    return assembleFleet(statuses, states, this.sql.latest.all(), filtered ? new Set(states.map((s) => s.device)) : undefined);
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
