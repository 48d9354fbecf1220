/** `--db` for the collector and `edgefleet status`: which backend, and where. */
import { isAbsolute, resolve } from 'node:path';
import { safeUrl } from '../../lib/broker.js';
import { UsageError } from '../errors.js';
import { PostgresStore } from './postgres-store.js';
import { SqliteStore } from './sqlite-store.js';
import type { FleetStore } from './store.js';

export const DEFAULT_DB = 'sqlite:edgefleet-collector.db';

export const DB_HELP = `  --db URL      sqlite:PATH (default ${DEFAULT_DB}, or $EDGEFLEET_DB) or
                postgres://user@host:5432/db (password from $PGPASSWORD or ~/.pgpass)`;

/** A human-readable name of the database, without credentials. */
export function describeDb(url: string, cwd: string): string {
  return url.startsWith('sqlite:') ? `sqlite:${sqlitePath(url, cwd)}` : safeUrl(url);
}

function sqlitePath(url: string, cwd: string): string {
  const path = url.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
  if (path === '') throw new UsageError('--db sqlite: needs a file path, e.g. sqlite:/var/lib/edgefleet/fleet.db');
  return isAbsolute(path) ? path : resolve(cwd, path);
}

/** The --db value, or its default. */
export function resolveDb(db: string | undefined): string {
  return db ?? process.env.EDGEFLEET_DB ?? DEFAULT_DB;
}

/**
 * The store `url` names (see resolveDb), not yet initialised. `mustExist`: a SQLite file must
 * already exist (readers should not create an empty database by mistake).
 */
export function openStore(
  url: string,
  options: { cwd: string; mustExist?: boolean; onError?: (err: Error) => void },
): FleetStore {
  if (url.startsWith('sqlite:')) return new SqliteStore(sqlitePath(url, options.cwd), { mustExist: options.mustExist ?? false });
  if (/^postgres(ql)?:\/\//.test(url)) return new PostgresStore(url, options.onError);
  throw new UsageError(`--db must be sqlite:PATH or postgres://..., got "${safeUrl(url)}"`);
}
