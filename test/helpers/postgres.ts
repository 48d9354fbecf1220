/**
 * A real PostgreSQL server for tests: initdb into a temp dir, started on a
 * free loopback port (as the "postgres" user when running as root, since the
 * server refuses root), torn down afterwards.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './child.js';

const run = promisify(execFile);

export function postgresBin(): string | undefined {
  if (process.env.PG_BIN) return process.env.PG_BIN;
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(base, versions[0], 'bin');
}

/** Like mosquittoSkipReason: skipped with a message outside CI, a failure in CI. */
export function postgresSkipReason(): string | false {
  if (postgresBin() !== undefined) return false;
  const why = 'PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); install postgresql (apt-get install -y postgresql)';
  if (process.env.CI) throw new Error(`${why}; CI is set, so the PostgreSQL store tests must run`);
  return why;
}

export interface PostgresServer {
  admin: pg.Client;
  port: number;
  stop(): Promise<void>;
}

/** initdb into a temp dir and start the server on a free loopback port, as a non-root user. */
export async function startPostgres(bin: string): Promise<PostgresServer> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-pg-'));
  const asRoot = userInfo().uid === 0;
  // PostgreSQL refuses to run as root; the Debian package's "postgres" user owns the temp dir instead.
  const as = (cmd: string, args: string[]): [string, string[]] => (asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]);
  if (asRoot) {
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: gid } = await run('id', ['-g', 'postgres']);
    await chown(dir, Number(stdout.trim()), Number(gid.trim()));
  }
  const data = join(dir, 'data');
  const port = await freePort();
  await run(...as(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']));
  const serverOptions = `-k ${dir} -p ${port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100`;
  await run(...as(join(bin, 'pg_ctl'), ['-D', data, '-l', join(dir, 'server.log'), '-o', serverOptions, '-w', '-t', '60', 'start']));
  const admin = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
  await admin.connect();
  return {
    admin,
    port,
    async stop() {
      await admin.end();
      await run(...as(join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', 'stop']));
      await rm(dir, { recursive: true, force: true });
    },
  };
}


let databases = 0;

/** A new empty database on `server`, as a connection URL. */
export async function freshDatabase(server: PostgresServer): Promise<string> {
  const name = `fleet_${process.pid}_${++databases}`;
  await server.admin.query(`CREATE DATABASE ${name}`);
  return `postgres://postgres@127.0.0.1:${server.port}/${name}`;
}
