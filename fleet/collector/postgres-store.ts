/**
 * The store for bigger fleets: PostgreSQL through node-postgres. Several
 * collectors may write to one database; each write is a single statement
 * (data-modifying CTEs), atomic on its own, and writes that arrive together
 * share one transaction (group commit, pg-group-writer.ts).
 */
import pg from 'pg';
import type { DeviceEvent, ReportedState, Status, TelemetryPoint } from '../../protocol/index.js';
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
import { PgGroupWriter } from './pg-group-writer.js';
import { inTransaction } from './pg-transaction.js';
import { POSTGRES_ALERT_MIGRATION, postgresAlerts, type AlertRecords } from './alert-records.js';
import { POSTGRES_ROLLOUT_MIGRATION, postgresRollouts, type RolloutRecords } from './rollout-records.js';
import { ACK_WALK_LIMIT, DEFAULT_SERIES_LIMIT, advanceAck, walkGoesOn, assembleFleet, checkFleetPageQuery, deviceStatesOf, eventHash, inPageOrder, latestRows, millis, pointRow, storedEvent, toSeries } from './store.js';

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
  // Issue 13: arrival times (retention and "last seen" go by them), per-device counters and the acknowledged prefix, quarantine.
  `ALTER TABLE fleet_points ADD COLUMN received_at timestamptz;
   CREATE INDEX fleet_points_received ON fleet_points (received_at);
   ALTER TABLE fleet_events ADD COLUMN received_at timestamptz;
   CREATE INDEX fleet_events_received ON fleet_events (received_at);
   ALTER TABLE fleet_latest ADD COLUMN received_at timestamptz;
   CREATE TABLE fleet_devices (
     device text PRIMARY KEY, ack_up_to bigint,
     quarantined bigint NOT NULL DEFAULT 0, over_quota bigint NOT NULL DEFAULT 0, clock_skewed bigint NOT NULL DEFAULT 0,
     dropped bigint NOT NULL DEFAULT 0, dropped_last_at timestamptz
   );
   CREATE TABLE fleet_quarantine (
     id bigserial PRIMARY KEY, device text NOT NULL, topic text NOT NULL, received_at timestamptz NOT NULL,
     reason text NOT NULL, size integer NOT NULL, excerpt bytea NOT NULL
   );
   CREATE INDEX fleet_quarantine_received ON fleet_quarantine (received_at);`,
  // Issue 13 item 5: the fleet table's sort keys per device, kept at write time, so a page is an indexed ORDER BY/LIMIT.
  // Device ids order by code point ("C"), as the CLI and fleet-query.ts order them, whatever the database's locale.
  `ALTER TABLE fleet_devices ADD COLUMN online boolean, ADD COLUMN last_seen timestamptz, ADD COLUMN errors bigint, ADD COLUMN p99 float8;
   INSERT INTO fleet_devices (device)
     SELECT device FROM fleet_status UNION SELECT device FROM fleet_state UNION SELECT device FROM fleet_latest
   ON CONFLICT (device) DO NOTHING;
   UPDATE fleet_devices d SET
     online = (SELECT online FROM fleet_status s WHERE s.device = d.device),
     last_seen = GREATEST(
       (SELECT received_at FROM fleet_status s WHERE s.device = d.device),
       (SELECT received_at FROM fleet_state s WHERE s.device = d.device),
       (SELECT max(COALESCE(received_at, ts)) FROM fleet_latest l WHERE l.device = d.device)),
     errors = (SELECT sum((data->>'errors')::bigint) FROM fleet_latest l WHERE l.device = d.device AND slot LIKE 'inference/%'),
     p99 = (SELECT max((data->'latencyMs'->>'p99')::float8) FROM fleet_latest l WHERE l.device = d.device AND slot LIKE 'inference/%');
   CREATE INDEX fleet_devices_by_id ON fleet_devices ((device COLLATE "C"));
   CREATE INDEX fleet_devices_last_seen ON fleet_devices (last_seen, (device COLLATE "C"));
   CREATE INDEX fleet_devices_online ON fleet_devices (online, (device COLLATE "C"));
   CREATE INDEX fleet_devices_errors ON fleet_devices (errors, (device COLLATE "C"));
   CREATE INDEX fleet_devices_p99 ON fleet_devices (p99, (device COLLATE "C"));
   CREATE INDEX fleet_devices_dropped ON fleet_devices (dropped, (device COLLATE "C"));`,
  // Issue 14: staged rollouts and the documents published for them (the controller's lead is an advisory lock).
  POSTGRES_ROLLOUT_MIGRATION,
  // Issue 15: the built-in alert evaluator's alerts and webhook outbox (its lead is an advisory lock of its own).
  POSTGRES_ALERT_MIGRATION,
];

/** The fleet_devices column each sort orders by. */
const SORT_COLUMN: Record<FleetPageSort, string> = {
  device: 'd.device COLLATE "C"',
  lastSeen: 'd.last_seen',
  online: 'd.online',
  errors: 'd.errors',
  p99: 'd.p99',
  dropped: 'd.dropped',
};

/** WHERE clause and parameters of a fleet page (PostgreSQL dialect). */
function pageFilter(q: FleetPageQuery): { where: string; params: unknown[] } {
  const terms: string[] = [];
  const params: unknown[] = [];
  const param = (value: unknown): string => `$${params.push(value)}`;
  if (q.group !== undefined) terms.push(`EXISTS (SELECT 1 FROM fleet_state s WHERE s.device = d.device AND s.doc->'groups' ? ${param(q.group)}::text)`);
  if (q.model !== undefined) {
    terms.push(`(EXISTS (SELECT 1 FROM fleet_latest l WHERE l.device = d.device AND l.slot = ${param(`inference/${q.model}`)})
      OR EXISTS (SELECT 1 FROM fleet_state s WHERE s.device = d.device
                 AND s.doc->'models' @> jsonb_build_array(jsonb_build_object('name', ${param(q.model)}::text))))`);
  }
  if (q.online !== undefined) terms.push(q.online ? 'd.online' : 'd.online IS NOT TRUE');
  if (q.errors !== undefined) terms.push(q.errors ? 'd.errors > 0' : 'COALESCE(d.errors, 0) = 0');
  if (q.minP99 !== undefined) terms.push(`d.p99 >= ${param(q.minP99)}::float8`);
  if (q.search !== undefined) terms.push(`strpos(lower(d.device), ${param(q.search)}::text) > 0`);
  return { where: terms.length === 0 ? '' : `WHERE ${terms.join(' AND ')}`, params };
}

/** Any constant: collectors starting together take turns migrating. */
const MIGRATION_LOCK = 0x65646766;

// Rows travel as one JSON parameter and come apart in jsonb_to_recordset: no placeholder lists to build.
const INSERT_POINTS = `
  WITH added AS (
    INSERT INTO fleet_points (device, seq, ts, kind, model, version, count, errors, p50, p99, cpu_pct, temp_c, mem_used, mem_total, data, received_at)
    SELECT $1, r.seq, to_timestamp(r.ts / 1000.0), r.kind, r.model, r.version, r.count, r.errors, r.p50, r.p99,
           r."cpuPct", r."tempC", r."memUsed", r."memTotal", r.data, to_timestamp(r."receivedAt" / 1000.0)
    FROM jsonb_to_recordset($2::jsonb) AS r(seq bigint, ts bigint, kind text, model text, version bigint, count bigint,
         errors bigint, p50 float8, p99 float8, "cpuPct" float8, "tempC" float8, "memUsed" bigint, "memTotal" bigint, data jsonb,
         "receivedAt" bigint)
    ON CONFLICT (device, seq) DO NOTHING
    RETURNING kind, count, received_at
  ), latest AS (
    INSERT INTO fleet_latest (device, slot, ts, data, received_at)
    SELECT $1, l.slot, to_timestamp(l.ts / 1000.0), l.data, to_timestamp(l."receivedAt" / 1000.0)
    FROM jsonb_to_recordset($3::jsonb) AS l(slot text, ts bigint, data jsonb, "receivedAt" bigint)
    ON CONFLICT (device, slot) DO UPDATE SET ts = excluded.ts, data = excluded.data, received_at = excluded.received_at
    WHERE excluded.ts > fleet_latest.ts
    RETURNING slot, data, received_at
  ), models AS (
    -- Each model's last interval after this batch: the statement's snapshot does not show its own updates, so the
    -- slots it changed come from RETURNING and the others from the table.
    SELECT (data->>'errors')::bigint AS errors, (data->'latencyMs'->>'p99')::float8 AS p99
    FROM fleet_latest WHERE device = $1 AND slot LIKE 'inference/%' AND slot NOT IN (SELECT slot FROM latest)
    UNION ALL
    SELECT (data->>'errors')::bigint, (data->'latencyMs'->>'p99')::float8 FROM latest WHERE slot LIKE 'inference/%'
  ), summary AS (
    -- One statement touches the device's row once: dropped figures, last seen, errors and worst p99.
    INSERT INTO fleet_devices (device, dropped, dropped_last_at, last_seen, errors, p99)
    SELECT $1, COALESCE((SELECT sum(count) FROM added WHERE kind = 'dropped'), 0),
      (SELECT max(received_at) FROM added WHERE kind = 'dropped'), (SELECT max(received_at) FROM latest),
      (SELECT sum(errors) FROM models), (SELECT max(p99) FROM models)
    ON CONFLICT (device) DO UPDATE SET dropped = fleet_devices.dropped + excluded.dropped,
      dropped_last_at = GREATEST(fleet_devices.dropped_last_at, excluded.dropped_last_at),
      last_seen = GREATEST(fleet_devices.last_seen, excluded.last_seen),
      errors = CASE WHEN EXISTS (SELECT 1 FROM latest WHERE slot LIKE 'inference/%') THEN excluded.errors ELSE fleet_devices.errors END,
      p99 = CASE WHEN EXISTS (SELECT 1 FROM latest WHERE slot LIKE 'inference/%') THEN excluded.p99 ELSE fleet_devices.p99 END
  )
  SELECT count(*)::int AS added FROM added`;

const UPSERT_STATUS = `
  WITH s AS (
    INSERT INTO fleet_status (device, online, ts, received_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (device) DO UPDATE SET online = excluded.online, ts = excluded.ts, received_at = excluded.received_at
  )
  INSERT INTO fleet_devices (device, online, last_seen) VALUES ($1, $2, $4)
  ON CONFLICT (device) DO UPDATE SET online = excluded.online, last_seen = GREATEST(fleet_devices.last_seen, excluded.last_seen)`;

const UPSERT_STATE = `
  WITH s AS (
    INSERT INTO fleet_state (device, ts, doc, received_at) VALUES ($1, $2, $3, $4)
    ON CONFLICT (device) DO UPDATE SET ts = excluded.ts, doc = excluded.doc, received_at = excluded.received_at
    WHERE excluded.ts >= fleet_state.ts
    RETURNING device, received_at
  )
  INSERT INTO fleet_devices (device, last_seen) SELECT device, received_at FROM s
  ON CONFLICT (device) DO UPDATE SET last_seen = GREATEST(fleet_devices.last_seen, excluded.last_seen)`;

const INSERT_EVENT = `
  INSERT INTO fleet_events (device, ts, hash, type, model, version, detail, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
  ON CONFLICT (device, ts, hash) DO NOTHING`;

const POINT_COLUMNS = `device, seq::float8 AS seq, ts, kind, model, version::float8 AS version, count::float8 AS count,
  errors::float8 AS errors, p50, p99, cpu_pct AS "cpuPct", temp_c AS "tempC", mem_used::float8 AS "memUsed",
  mem_total::float8 AS "memTotal", CASE WHEN kind IN ('health', 'dropped') THEN data::text ELSE '' END AS data`;

type Timed<T> = Omit<T, 'ts'> & { ts: Date };

export class PostgresStore implements FleetStore {
  readonly kind = 'postgres';
  private readonly pool: pg.Pool;
  private readonly writer: PgGroupWriter;
  readonly rollouts: RolloutRecords & { close(): Promise<void> };
  readonly alerts: AlertRecords & { close(): Promise<void> };

  constructor(connectionString: string, onError: (err: Error) => void = () => undefined) {
    // Four clients for groups of writes, the rest for the acknowledgement pass, pruning and reads.
    this.pool = new pg.Pool({ connectionString, max: 8 });
    this.writer = new PgGroupWriter(this.pool, { groups: 4, maxWrites: 256 });
    this.rollouts = postgresRollouts(this.pool, onError);
    this.alerts = postgresAlerts(this.pool, onError);
    // An idle client losing its connection must not crash the process; the next query reports it.
    this.pool.on('error', onError);
  }

  async init(): Promise<void> {
    await inTransaction(this.pool, async (client) => {
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
    });
  }

  async insertPoints(device: string, points: readonly TelemetryPoint[], receivedAt?: number): Promise<number> {
    if (points.length === 0) return 0;
    const rows = points.map((p) => {
      const row = pointRow(device, p);
      return { ...row, data: p, receivedAt: receivedAt ?? row.ts };
    });
    // In slot order, so two collectors writing one device's batches lock its latest rows in the same order.
    const latest = latestRows(device, points, receivedAt).sort((a, b) => (a.slot < b.slot ? -1 : a.slot > b.slot ? 1 : 0)).map((l) => ({ slot: l.slot, ts: l.ts, receivedAt: l.receivedAt, data: JSON.parse(l.data) as unknown }));
    const params = [device, JSON.stringify(rows), JSON.stringify(latest)];
    return this.writer.write(device, async (db) => (await db.query<{ added: number }>({ name: 'insert_points', text: INSERT_POINTS, values: params })).rows[0]?.added ?? 0);
  }

  /**
   * Two statements for the whole pass, whatever the number of devices: read
   * each device's prefix (creating it just below its first seq) with the
   * points above it, walk in JS, write with GREATEST. No lock is held
   * between them: every prefix a collector works out only vouches for rows
   * that are stored, so the greatest of two is as true as either, and two
   * collectors on one database never lower it.
   */
  async acknowledge(firstSeqs: ReadonlyMap<string, number>): Promise<Map<string, number>> {
    const acked = new Map<string, number>();
    if (firstSeqs.size === 0) return acked;
    // Device order: collectors sharing the database take the rows in one order.
    const input = [...firstSeqs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([device, first]) => ({ device, first }));
    type Row = { device: string; from: number; seq: number | null; oldestSeq: number | null; newestSeq: number | null };
    const { rows } = await this.pool.query<Row>(
      `WITH input AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(device text, first bigint)),
       start AS (
         INSERT INTO fleet_devices (device, ack_up_to) SELECT device, first - 1 FROM input
         ON CONFLICT (device) DO UPDATE SET ack_up_to = COALESCE(fleet_devices.ack_up_to, excluded.ack_up_to)
         RETURNING device, ack_up_to
       )
       SELECT s.device, s.ack_up_to::float8 AS "from", p.seq::float8 AS seq,
         CASE WHEN p.kind = 'dropped' THEN (p.data->>'oldestSeq')::float8 END AS "oldestSeq",
         CASE WHEN p.kind = 'dropped' THEN (p.data->>'newestSeq')::float8 END AS "newestSeq"
       FROM start s LEFT JOIN LATERAL (
         SELECT seq, kind, data FROM fleet_points WHERE device = s.device AND seq > s.ack_up_to ORDER BY seq LIMIT $2
       ) p ON true
       ORDER BY s.device, p.seq`,
      [JSON.stringify(input), ACK_WALK_LIMIT],
    );
    const walks = new Map<string, { from: number; above: AckPoint[] }>();
    for (const r of rows) {
      let walk = walks.get(r.device);
      if (walk === undefined) {
        walk = { from: r.from, above: [] };
        walks.set(r.device, walk);
      }
      if (r.seq !== null) walk.above.push({ seq: r.seq, oldestSeq: r.oldestSeq, newestSeq: r.newestSeq });
    }
    const upTo = [...walks].map(([device, w]) => ({ device, up: advanceAck(w.from, w.above), more: false }));
    for (const u of upTo) u.more = walkGoesOn(walks.get(u.device)?.above ?? [], u.up);
    const { rows: done } = await this.pool.query<{ device: string; upTo: number }>(
      `UPDATE fleet_devices d SET ack_up_to = GREATEST(d.ack_up_to, r.up)
       FROM jsonb_to_recordset($1::jsonb) AS r(device text, up bigint)
       WHERE d.device = r.device
       RETURNING d.device, d.ack_up_to::float8 AS "upTo"`,
      [JSON.stringify(upTo)],
    );
    for (const r of done) acked.set(r.device, r.upTo);
    // Devices whose walk read its whole limit and passed it all go on from where it stopped.
    const more = upTo.filter((u) => u.more);
    if (more.length > 0) for (const [device, up] of await this.acknowledge(new Map(more.map((u) => [u.device, u.up + 1])))) acked.set(device, up);
    return acked;
  }

  async quarantine(entry: QuarantineEntry): Promise<void> {
    const params = [entry.device, entry.topic, new Date(entry.receivedAt), entry.reason, entry.size, entry.excerpt];
    await this.writer.write(entry.device, (db) => db.query('INSERT INTO fleet_quarantine (device, topic, received_at, reason, size, excerpt) VALUES ($1, $2, $3, $4, $5, $6)', params));
  }

  async quarantined(limit: number): Promise<QuarantineEntry[]> {
    const { rows } = await this.pool.query<Timed<QuarantineEntry> & { receivedAt: Date }>(
      `SELECT device, topic, received_at AS "receivedAt", reason, size, excerpt FROM fleet_quarantine ORDER BY id DESC LIMIT $1`,
      [limit],
    );
    return rows.map((r) => ({ ...r, receivedAt: r.receivedAt.getTime() }));
  }

  async addCounts(counts: ReadonlyMap<string, { quarantined: number; overQuota: number; clockSkewed: number }>): Promise<void> {
    if (counts.size === 0) return;
    const rows = [...counts].map(([device, c]) => ({ device, ...c }));
    await this.pool.query(
      `INSERT INTO fleet_devices (device, quarantined, over_quota, clock_skewed)
       SELECT r.device, r.quarantined, r."overQuota", r."clockSkewed"
       FROM jsonb_to_recordset($1::jsonb) AS r(device text, quarantined bigint, "overQuota" bigint, "clockSkewed" bigint)
       ON CONFLICT (device) DO UPDATE SET quarantined = fleet_devices.quarantined + excluded.quarantined,
         over_quota = fleet_devices.over_quota + excluded.over_quota, clock_skewed = fleet_devices.clock_skewed + excluded.clock_skewed`,
      [JSON.stringify(rows)],
    );
  }

  async deviceModels(device: string): Promise<string[]> {
    const { rows } = await this.pool.query<{ slot: string }>("SELECT slot FROM fleet_latest WHERE device = $1 AND slot LIKE 'inference/%'", [device]);
    return rows.map((r) => r.slot.slice('inference/'.length));
  }

  async upsertStatus(device: string, status: Status, receivedAt: number): Promise<void> {
    const params = [device, status.online, status.ts === undefined ? null : new Date(millis(status.ts)), new Date(receivedAt)];
    await this.writer.write(device, (db) => db.query({ name: 'upsert_status', text: UPSERT_STATUS, values: params }));
  }

  async upsertState(state: ReportedState, receivedAt: number): Promise<void> {
    const params = [state.device, new Date(millis(state.ts)), JSON.stringify(state), new Date(receivedAt)];
    await this.writer.write(state.device, (db) => db.query({ name: 'upsert_state', text: UPSERT_STATE, values: params }));
  }

  async insertEvent(device: string, event: DeviceEvent, receivedAt?: number): Promise<boolean> {
    const ts = millis(event.ts);
    const params = [device, new Date(ts), eventHash(event), event.type, event.model ?? null, event.version ?? null, event.detail ?? null, new Date(receivedAt ?? ts)];
    return this.writer.write(device, async (db) => ((await db.query({ name: 'insert_event', text: INSERT_EVENT, values: params })).rowCount ?? 0) > 0);
  }

  async prune(before: number): Promise<{ points: number; events: number }> {
    const { rows } = await this.pool.query<{ points: number; events: number }>(
      // Rows from before arrival times were kept go by their own time.
      `WITH p AS (DELETE FROM fleet_points WHERE received_at < $1 OR (received_at IS NULL AND ts < $1) RETURNING 1),
            e AS (DELETE FROM fleet_events WHERE received_at < $1 OR (received_at IS NULL AND ts < $1) RETURNING 1),
            q AS (DELETE FROM fleet_quarantine WHERE received_at < $1)
       SELECT (SELECT count(*) FROM p)::int AS points, (SELECT count(*) FROM e)::int AS events`,
      [new Date(before)],
    );
    return rows[0] ?? { points: 0, events: 0 };
  }

  async fleetStatus(filters: FleetFilters = {}): Promise<FleetRow[]> {
    const { rows: stateRows } = await this.pool.query<{ device: string; doc: ReportedState; receivedAt: Date }>(
      `SELECT device, doc, received_at AS "receivedAt" FROM fleet_state
       WHERE ($1::text IS NULL OR doc->'groups' ? $1)
         AND ($2::text IS NULL OR doc->'models' @> jsonb_build_array(jsonb_build_object('name', $2::text)))`,
      [filters.group ?? null, filters.model ?? null],
    );
    const states = stateRows.map((r) => ({ device: r.device, state: r.doc, receivedAt: r.receivedAt.getTime() }));
    const filtered = filters.group !== undefined || filters.model !== undefined;
    // Unfiltered reads take every row; filtered ones only the devices whose state matched.
    const only = filtered ? states.map((s) => s.device) : null;
    type CountsRow = Omit<DeviceCountsRecord, 'droppedLastAt'> & { droppedLastAt: Date | null };
    const [statuses, latest, counts] = await Promise.all([
      this.pool.query<{ device: string; online: boolean; receivedAt: Date }>(
        'SELECT device, online, received_at AS "receivedAt" FROM fleet_status WHERE $1::text[] IS NULL OR device = ANY($1)',
        [only],
      ),
      this.pool.query<{ device: string; slot: string; ts: Date; receivedAt: Date; data: unknown }>(
        'SELECT device, slot, ts, COALESCE(received_at, ts) AS "receivedAt", data FROM fleet_latest WHERE $1::text[] IS NULL OR device = ANY($1)',
        [only],
      ),
      this.pool.query<CountsRow>(
        `SELECT device, quarantined::float8 AS quarantined, over_quota::float8 AS "overQuota", clock_skewed::float8 AS "clockSkewed",
           dropped::float8 AS dropped, dropped_last_at AS "droppedLastAt"
         FROM fleet_devices WHERE $1::text[] IS NULL OR device = ANY($1)`,
        [only],
      ),
    ]);
    return assembleFleet(
      statuses.rows.map((r): StatusRecord => ({ device: r.device, online: r.online, receivedAt: r.receivedAt.getTime() })),
      states,
      latest.rows.map((r): LatestRow => ({ ...r, ts: r.ts.getTime(), receivedAt: r.receivedAt.getTime(), data: JSON.stringify(r.data) })),
      counts.rows.map((r) => ({ ...r, droppedLastAt: r.droppedLastAt?.getTime() ?? null })),
      only === null ? undefined : new Set(only),
    );
  }

  async fleetPage(query: FleetPageQuery): Promise<FleetPageResult> {
    const q = checkFleetPageQuery(query);
    const { where, params } = pageFilter(q);
    const dir = q.desc ? 'DESC' : 'ASC';
    const order = q.sort === 'device' ? `${SORT_COLUMN.device} ${dir}` : `${SORT_COLUMN[q.sort]} ${dir} NULLS LAST, ${SORT_COLUMN.device}`;
    // One snapshot: the count, the page and its rows agree.
    return inTransaction(
      this.pool,
      async (client) => {
        const { rows: totals } = await client.query<{ total: number; online: number }>(
          `SELECT count(*)::int AS total, (count(*) FILTER (WHERE d.online))::int AS online FROM fleet_devices d ${where}`,
          params,
        );
        const n = params.length;
        const { rows: page } = await client.query<{ device: string }>(
          `SELECT d.device FROM fleet_devices d ${where} ORDER BY ${order} LIMIT $${n + 1} OFFSET $${n + 2}`,
          [...params, q.limit, q.offset],
        );
        const devices = page.map((r) => r.device);
        const rows = devices.length === 0 ? [] : await this.assemble(client, devices);
        return { total: totals[0]?.total ?? 0, online: totals[0]?.online ?? 0, rows: inPageOrder(devices, rows) };
      },
      'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
    );
  }

  /** The fleet rows of `devices` (any order). */
  private async assemble(db: pg.PoolClient, devices: readonly string[]): Promise<FleetRow[]> {
    type CountsRow = Omit<DeviceCountsRecord, 'droppedLastAt'> & { droppedLastAt: Date | null };
    const statuses = await db.query<{ device: string; online: boolean; receivedAt: Date }>(
      'SELECT device, online, received_at AS "receivedAt" FROM fleet_status WHERE device = ANY($1)',
      [devices],
    );
    const states = await db.query<{ device: string; doc: ReportedState; receivedAt: Date }>(
      'SELECT device, doc, received_at AS "receivedAt" FROM fleet_state WHERE device = ANY($1)',
      [devices],
    );
    const latest = await db.query<{ device: string; slot: string; ts: Date; receivedAt: Date; data: unknown }>(
      'SELECT device, slot, ts, COALESCE(received_at, ts) AS "receivedAt", data FROM fleet_latest WHERE device = ANY($1)',
      [devices],
    );
    const counts = await db.query<CountsRow>(
      `SELECT device, quarantined::float8 AS quarantined, over_quota::float8 AS "overQuota", clock_skewed::float8 AS "clockSkewed",
         dropped::float8 AS dropped, dropped_last_at AS "droppedLastAt"
       FROM fleet_devices WHERE device = ANY($1)`,
      [devices],
    );
    return assembleFleet(
      statuses.rows.map((r): StatusRecord => ({ device: r.device, online: r.online, receivedAt: r.receivedAt.getTime() })),
      states.rows.map((r) => ({ device: r.device, state: r.doc, receivedAt: r.receivedAt.getTime() })),
      latest.rows.map((r): LatestRow => ({ ...r, ts: r.ts.getTime(), receivedAt: r.receivedAt.getTime(), data: JSON.stringify(r.data) })),
      counts.rows.map((r) => ({ ...r, droppedLastAt: r.droppedLastAt?.getTime() ?? null })),
    );
  }

  async deviceStates(devices: readonly string[]): Promise<DeviceState[]> {
    if (devices.length === 0) return [];
    const [statuses, states] = await Promise.all([
      this.pool.query<{ device: string; online: boolean }>('SELECT device, online FROM fleet_status WHERE device = ANY($1)', [devices]),
      this.pool.query<{ device: string; doc: ReportedState }>('SELECT device, doc FROM fleet_state WHERE device = ANY($1)', [devices]),
    ]);
    return deviceStatesOf(statuses.rows, states.rows.map((r) => ({ device: r.device, state: r.doc })));
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
    await this.rollouts.close();
    await this.alerts.close();
    await this.pool.end();
  }
}
