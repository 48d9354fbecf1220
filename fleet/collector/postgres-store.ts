/**
 * The store for bigger fleets: PostgreSQL through node-postgres. Several
 * collectors may write to one database; each write is a single statement
 * (data-modifying CTEs), so it is atomic without holding a client across
 * round trips.
 */
import pg from 'pg';
import type { DeviceEvent, ReportedState, Status, TelemetryPoint } from '../../protocol/index.js';
import type { DeviceSeries, FleetFilters, FleetRow, FleetStore, LatestRow, PointRow, StatusRecord, StoredEvent, TimeRange } from './store.js';
import { DEFAULT_SERIES_LIMIT, assembleFleet, eventHash, latestRows, millis, pointRow, storedEvent, toSeries } from './store.js';

/** Append-only: entry N takes the schema from version N to N+1. */
export const POSTGRES_MIGRATIONS: readonly string[] = [
  `CREATE TABLE fleet_points (
     device text NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL, kind text NOT NULL,
     model text, version bigint, count bigint, errors bigint, p50 float8, p99 float8,
     cpu_pct float8, temp_c float8, mem_used bigint, mem_total bigint, data jsonb NOT NULL,
     PRIMARY KEY (device, seq)
   );
   CREATE INDEX fleet_points_ts ON fleet_points (ts);
   CREATE INDEX fleet_points_device_ts ON fleet_points (device, ts);
   CREATE TABLE fleet_latest (
     device text NOT NULL, slot text NOT NULL, ts timestamptz NOT NULL, data jsonb NOT NULL,
     PRIMARY KEY (device, slot)
   );
   CREATE TABLE fleet_status (
     device text PRIMARY KEY, online boolean NOT NULL, ts timestamptz, received_at timestamptz NOT NULL
   );
   CREATE TABLE fleet_state (
     device text PRIMARY KEY, ts timestamptz NOT NULL, doc jsonb NOT NULL, received_at timestamptz NOT NULL
   );
   CREATE TABLE fleet_events (
     device text NOT NULL, ts timestamptz NOT NULL, hash text NOT NULL, type text NOT NULL,
     model text, version bigint, detail text,
     PRIMARY KEY (device, ts, hash)
   );
   CREATE INDEX fleet_events_ts ON fleet_events (ts);`,
];

/** Any constant: collectors starting together take turns migrating. */
const MIGRATION_LOCK = 0x65646766;

// Rows travel as one JSON parameter and come apart in jsonb_to_recordset: no placeholder lists to build.
const INSERT_POINTS = `
  WITH added AS (
    INSERT INTO fleet_points (device, seq, ts, kind, model, version, count, errors, p50, p99, cpu_pct, temp_c, mem_used, mem_total, data)
    SELECT $1, r.seq, to_timestamp(r.ts / 1000.0), r.kind, r.model, r.version, r.count, r.errors, r.p50, r.p99,
           r."cpuPct", r."tempC", r."memUsed", r."memTotal", r.data
    FROM jsonb_to_recordset($2::jsonb) AS r(seq bigint, ts bigint, kind text, model text, version bigint, count bigint,
         errors bigint, p50 float8, p99 float8, "cpuPct" float8, "tempC" float8, "memUsed" bigint, "memTotal" bigint, data jsonb)
    ON CONFLICT (device, seq) DO NOTHING
    RETURNING 1
  ), latest AS (
    INSERT INTO fleet_latest (device, slot, ts, data)
    SELECT $1, l.slot, to_timestamp(l.ts / 1000.0), l.data FROM jsonb_to_recordset($3::jsonb) AS l(slot text, ts bigint, data jsonb)
    ON CONFLICT (device, slot) DO UPDATE SET ts = excluded.ts, data = excluded.data WHERE excluded.ts > fleet_latest.ts
  )
  SELECT count(*)::int AS added FROM added`;

const POINT_COLUMNS = `device, seq::float8 AS seq, ts, kind, model, version::float8 AS version, count::float8 AS count,
  errors::float8 AS errors, p50, p99, cpu_pct AS "cpuPct", temp_c AS "tempC", mem_used::float8 AS "memUsed",
  mem_total::float8 AS "memTotal", '' AS data`;

type Timed<T> = Omit<T, 'ts'> & { ts: Date };

export class PostgresStore implements FleetStore {
  readonly kind = 'postgres';
  private readonly pool: pg.Pool;

  constructor(connectionString: string, onError: (err: Error) => void = () => undefined) {
    this.pool = new pg.Pool({ connectionString, max: 4 });
    // An idle client losing its connection must not crash the process; the next query reports it.
    this.pool.on('error', onError);
  }

  async init(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await client.query('CREATE TABLE IF NOT EXISTS fleet_schema (version integer NOT NULL)');
      const { rows } = await client.query<{ version: number }>('SELECT version FROM fleet_schema');
      const current = rows[0]?.version ?? 0;
      if (current > POSTGRES_MIGRATIONS.length) {
        throw new Error(`database schema is at version ${current}, newer than this collector knows (${POSTGRES_MIGRATIONS.length})`);
      }
      for (const sql of POSTGRES_MIGRATIONS.slice(current)) await client.query(sql);
      await client.query('DELETE FROM fleet_schema');
      await client.query('INSERT INTO fleet_schema (version) VALUES ($1)', [POSTGRES_MIGRATIONS.length]);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  async insertPoints(device: string, points: readonly TelemetryPoint[]): Promise<number> {
    if (points.length === 0) return 0;
    const rows = points.map((p) => ({ ...pointRow(device, p), data: p }));
    const latest = latestRows(device, points).map((l) => ({ slot: l.slot, ts: l.ts, data: JSON.parse(l.data) as unknown }));
    const { rows: result } = await this.pool.query<{ added: number }>(INSERT_POINTS, [device, JSON.stringify(rows), JSON.stringify(latest)]);
    return result[0]?.added ?? 0;
  }

  async upsertStatus(device: string, status: Status, receivedAt: number): Promise<void> {
    await this.pool.query(
      `INSERT INTO fleet_status (device, online, ts, received_at) VALUES ($1, $2, $3, $4)
       ON CONFLICT (device) DO UPDATE SET online = excluded.online, ts = excluded.ts, received_at = excluded.received_at`,
      [device, status.online, status.ts === undefined ? null : new Date(millis(status.ts)), new Date(receivedAt)],
    );
  }

  async upsertState(state: ReportedState, receivedAt: number): Promise<void> {
    await this.pool.query(
      `INSERT INTO fleet_state (device, ts, doc, received_at) VALUES ($1, $2, $3, $4)
       ON CONFLICT (device) DO UPDATE SET ts = excluded.ts, doc = excluded.doc, received_at = excluded.received_at
       WHERE excluded.ts >= fleet_state.ts`,
      [state.device, new Date(millis(state.ts)), JSON.stringify(state), new Date(receivedAt)],
    );
  }

  async insertEvent(device: string, event: DeviceEvent): Promise<boolean> {
    const { rowCount } = await this.pool.query(
      `INSERT INTO fleet_events (device, ts, hash, type, model, version, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (device, ts, hash) DO NOTHING`,
      [device, new Date(millis(event.ts)), eventHash(event), event.type, event.model ?? null, event.version ?? null, event.detail ?? null],
    );
    return (rowCount ?? 0) > 0;
  }

  async prune(before: number): Promise<{ points: number; events: number }> {
    const { rows } = await this.pool.query<{ points: number; events: number }>(
      `WITH p AS (DELETE FROM fleet_points WHERE ts < $1 RETURNING 1), e AS (DELETE FROM fleet_events WHERE ts < $1 RETURNING 1)
       SELECT (SELECT count(*) FROM p)::int AS points, (SELECT count(*) FROM e)::int AS events`,
      [new Date(before)],
    );
    return rows[0] ?? { points: 0, events: 0 };
  }

  async fleetStatus(filters: FleetFilters = {}): Promise<FleetRow[]> {
    const { rows: stateRows } = await this.pool.query<{ device: string; doc: ReportedState }>(
      `SELECT device, doc FROM fleet_state
       WHERE ($1::text IS NULL OR doc->'groups' ? $1)
         AND ($2::text IS NULL OR doc->'models' @> jsonb_build_array(jsonb_build_object('name', $2::text)))`,
      [filters.group ?? null, filters.model ?? null],
    );
    const states = stateRows.map((r) => ({ device: r.device, state: r.doc }));
    const filtered = filters.group !== undefined || filters.model !== undefined;
    // Unfiltered reads take every row; filtered ones only the devices whose state matched.
    const only = filtered ? states.map((s) => s.device) : null;
    const [statuses, latest] = await Promise.all([
      this.pool.query<Timed<StatusRecord>>(
        'SELECT device, online, COALESCE(ts, received_at) AS ts FROM fleet_status WHERE $1::text[] IS NULL OR device = ANY($1)',
        [only],
      ),
      this.pool.query<Timed<LatestRow> & { data: unknown }>(
        'SELECT device, slot, ts, data FROM fleet_latest WHERE $1::text[] IS NULL OR device = ANY($1)',
        [only],
      ),
    ]);
    return assembleFleet(
      statuses.rows.map((r) => ({ ...r, ts: r.ts.getTime() })),
      states,
      latest.rows.map((r) => ({ ...r, ts: r.ts.getTime(), data: JSON.stringify(r.data) })),
      only === null ? undefined : new Set(only),
    );
  }

  async series(device: string, range: TimeRange): Promise<DeviceSeries> {
    const { rows } = await this.pool.query<Timed<PointRow>>(
      `SELECT ${POINT_COLUMNS} FROM fleet_points WHERE device = $1 AND ts BETWEEN $2 AND $3 ORDER BY ts DESC, seq DESC LIMIT $4`,
      [device, new Date(range.from), new Date(range.to), range.limit ?? DEFAULT_SERIES_LIMIT],
    );
    return toSeries(device, rows.map((r) => ({ ...r, ts: r.ts.getTime() })));
  }

  async events(device: string, range: TimeRange): Promise<StoredEvent[]> {
    type Row = { ts: Date; type: string; model: string | null; version: number | null; detail: string | null };
    const { rows } = await this.pool.query<Row>(
      `SELECT ts, type, model, version::float8 AS version, detail FROM fleet_events
       WHERE device = $1 AND ts BETWEEN $2 AND $3 ORDER BY ts DESC LIMIT $4`,
      [device, new Date(range.from), new Date(range.to), range.limit ?? DEFAULT_SERIES_LIMIT],
    );
    return rows.reverse().map((r) => storedEvent(device, r));
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
