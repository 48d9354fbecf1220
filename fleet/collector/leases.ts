/**
 * Leases that let one collector at a time do a job for the whole store (run
 * the rollout controller, evaluate alert rules) while several share it.
 * SQLite: a row per lease name, renewed each tick, that lapses after its
 * ttl. PostgreSQL: a session advisory lock per job, freed when its holder's
 * connection goes.
 */
import type Database from 'better-sqlite3';
import type pg from 'pg';

export interface Lease {
  /** Takes or keeps the lease for `holder`; false while another holder has it. */
  lead(holder: string, ttlMs: number): Promise<boolean>;
  /** Gives the lease up (a clean stop). */
  resign(holder: string): Promise<void>;
}

/** A row of fleet_leases (created by the rollout migration) named `name`. */
export function sqliteLease(db: Database.Database, name: string): Lease {
  const lead = db.prepare(
    `INSERT INTO fleet_leases (name, holder, expires_at) VALUES (?, ?, ?)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
     WHERE fleet_leases.holder = excluded.holder OR fleet_leases.expires_at < ?`,
  );
  const resign = db.prepare('DELETE FROM fleet_leases WHERE name = ? AND holder = ?');
  return {
    async lead(holder, ttlMs) {
      const now = Date.now();
      return lead.run(name, holder, now + ttlMs, now).changes > 0;
    },
    async resign(holder) {
      resign.run(name, holder);
    },
  };
}

/**
 * The advisory lock `lockKey` (a constant per job), held on a client taken
 * out of the pool for as long as this process leads. `onLost` hears when
 * that connection breaks (the lock went with it).
 */
export function postgresLease(pool: pg.Pool, lockKey: number, onLost: (err: Error) => void): Lease & { close(): Promise<void> } {
  let leader: pg.Client | undefined;
  const resign = async (): Promise<void> => {
    const held = leader;
    leader = undefined;
    if (held) {
      await held.query('SELECT pg_advisory_unlock($1)', [lockKey]).catch(() => undefined);
      (held as unknown as pg.PoolClient).release();
    }
  };
  return {
    async lead() {
      if (leader !== undefined) {
        const held = leader;
        try {
          await held.query('SELECT 1');
          return true;
        } catch (err) {
          // The session is gone and the lock with it; another collector may hold it by now.
          leader = undefined;
          (held as unknown as pg.PoolClient).release(err as Error);
        }
      }
      const client = await pool.connect();
      try {
        const { rows } = await client.query<{ got: boolean }>('SELECT pg_try_advisory_lock($1) AS got', [lockKey]);
        if (rows[0]?.got !== true) return false;
        // The lock lives as long as this session: the client leaves the pool, and losing it loses the lead.
        const held = client as unknown as pg.Client;
        held.on('error', (err: Error) => {
          if (leader === held) leader = undefined;
          onLost(err);
        });
        leader = held;
        return true;
      } finally {
        if (leader !== (client as unknown as pg.Client)) client.release();
      }
    },
    resign,
    close: resign,
  };
}
