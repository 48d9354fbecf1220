/**
 * Group commit for PostgreSQL: the collector writes one message at a time,
 * and with thousands of devices one commit (one WAL flush) per message is
 * what limits it. Writes that arrive while a group is in flight wait and go
 * together in the next: one transaction, one flush.
 *
 * A group runs its statements in device order, so collectors sharing a
 * database take each device's rows in the same order. When any statement
 * fails (a row refused for good, a deadlock with another collector) the
 * group rolls back and each write runs again on its own: the ones that
 * succeed resolve and only the one that fails rejects, with its own error.
 * A failed COMMIT rejects nothing by itself: the writes rerun alone too.
 */
import type pg from 'pg';

/** One write: a statement (or a few) run on the client it is given. */
export type PgWrite<T> = (db: pg.ClientBase | pg.Pool) => Promise<T>;

interface Queued {
  device: string;
  run: PgWrite<unknown>;
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

export interface GroupWriterOptions {
  /** Groups in flight at once (each holds one pooled client). */
  groups: number;
  /** Most writes in one transaction. */
  maxWrites: number;
}

export class PgGroupWriter {
  private readonly queue: Queued[] = [];
  private inFlight = 0;
  /** Counts for tests and the benchmark: groups committed and the writes in them, writes run alone, groups that failed and ran again write by write. */
  readonly stats = { groups: 0, grouped: 0, alone: 0, retried: 0 };

  constructor(
    private readonly pool: pg.Pool,
    private readonly options: GroupWriterOptions = { groups: 4, maxWrites: 256 },
  ) {}

  write<T>(device: string, run: PgWrite<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ device, run, resolve: resolve as (value: unknown) => void, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.options.groups && this.queue.length > 0) {
      const group = this.queue.splice(0, this.options.maxWrites);
      this.inFlight++;
      void this.runGroup(group).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  private async runGroup(group: Queued[]): Promise<void> {
    if (group.length === 1) return this.runAlone(group);
    // Stable: one device's writes keep their arrival order.
    group.sort((a, b) => (a.device < b.device ? -1 : a.device > b.device ? 1 : 0));
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      for (const w of group) w.reject(err);
      return;
    }
    const results: unknown[] = [];
    let failure: Error | undefined;
    try {
      await client.query('BEGIN');
      for (const w of group) results.push(await w.run(client));
      await client.query('COMMIT');
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
      await client.query('ROLLBACK').catch(() => undefined);
    } finally {
      // After a failure the client is closed, not handed on: its connection may be the thing that broke.
      client.release(failure);
    }
    if (failure !== undefined) {
      this.stats.retried++;
      return this.runAlone(group);
    }
    this.stats.groups++;
    this.stats.grouped += group.length;
    group.forEach((w, i) => w.resolve(results[i]));
  }

  private async runAlone(writes: readonly Queued[]): Promise<void> {
    for (const w of writes) {
      this.stats.alone++;
      try {
        w.resolve(await w.run(this.pool));
      } catch (err) {
        w.reject(err);
      }
    }
  }
}
