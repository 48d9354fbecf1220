/**
 * Both collector stores for a test file: a temp dir for SQLite files and,
 * when the binaries are there, a real PostgreSQL, started before the file's
 * tests and stopped after (the hooks are registered by the call, which must
 * be at the file's top level). Each `fresh()` is a new empty database; the
 * function it returns opens a store on it, as often as asked (a reopen).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { PostgresStore } from '../../fleet/collector/postgres-store.js';
import { SqliteStore } from '../../fleet/collector/sqlite-store.js';
import type { FleetStore } from '../../fleet/collector/store.js';
import { freshDatabase, postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './postgres.js';

export interface StoreBackend {
  name: 'SQLite' | 'PostgreSQL';
  /** Why the backend's tests are skipped, or false. */
  skip: string | false;
  /** A new empty database; the function returned opens a store on it. */
  fresh: () => Promise<() => FleetStore>;
  /** A store on a new empty database (not yet initialised). */
  open: () => Promise<FleetStore>;
}

export interface StoreBackends {
  backends: readonly StoreBackend[];
  pgSkip: string | false;
  /** The temp dir (after beforeAll). */
  dir: () => string;
  /** The PostgreSQL server (after beforeAll, when not skipped). */
  server: () => PostgresServer;
}

export function storeBackends(prefix: string): StoreBackends {
  let dir: string | undefined;
  let server: PostgresServer | undefined;
  const pgSkip = postgresSkipReason();
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `edgefleet-${prefix}-`));
    if (pgSkip === false) server = await startPostgres(postgresBin() as string);
  }, 90_000);
  afterAll(async () => {
    await server?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  const context = {
    pgSkip,
    dir: (): string => {
      if (dir === undefined) throw new Error('storeBackends: dir() before beforeAll');
      return dir;
    },
    server: (): PostgresServer => {
      if (server === undefined) throw new Error('storeBackends: no PostgreSQL server (skipped, or before beforeAll)');
      return server;
    },
  };
  let files = 0;
  const backend = (name: StoreBackend['name'], skip: string | false, fresh: () => Promise<() => FleetStore>): StoreBackend => ({
    name, skip, fresh, open: async () => (await fresh())(),
  });
  return {
    ...context,
    backends: [
      backend('SQLite', false, async () => {
        const file = join(context.dir(), `${prefix}-${++files}.db`);
        return () => new SqliteStore(file);
      }),
      backend('PostgreSQL', pgSkip, async () => {
        const url = await freshDatabase(context.server());
        return () => new PostgresStore(url);
      }),
    ],
  };
}
