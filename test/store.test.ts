import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentDatabase, MIGRATIONS, agentDatabasePath, kv } from '../agent/store/database.js';
import { fsyncDir, removeQuietly, writeFileAtomic } from '../agent/store/fs-atomic.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-store-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const tables = (db: AgentDatabase): string[] =>
  (db.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map(
    (r) => r.name,
  );

describe('AgentDatabase', () => {
  it('creates the schema with WAL and synchronous=FULL', () => {
    const db = AgentDatabase.open(agentDatabasePath(join(dir, 'state')));
    try {
      expect(db.schemaVersion).toBe(MIGRATIONS.length);
      expect(tables(db)).toEqual(expect.arrayContaining(['artifact_blocks', 'kv']));
      expect(db.db.pragma('journal_mode', { simple: true })).toBe('wal');
      expect(db.db.pragma('synchronous', { simple: true })).toBe(2); // FULL
    } finally {
      db.close();
    }
  });

  it('relaxed() commits with synchronous=NORMAL and restores FULL, even when the write throws', () => {
    const db = AgentDatabase.open(agentDatabasePath(join(dir, 'state')));
    const sync = (): number => db.db.pragma('synchronous', { simple: true }) as number;
    const seen = db.relaxed(() => {
      db.db.prepare("INSERT INTO artifact_blocks (sha256, idx) VALUES ('a', 1)").run();
      return sync();
    });
    expect(seen).toBe(1); // NORMAL
    expect(sync()).toBe(2); // FULL
    expect(() =>
      db.relaxed(() => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(sync()).toBe(2);
    expect(db.db.prepare('SELECT count(*) AS n FROM artifact_blocks').get()).toEqual({ n: 1 });
    db.close();
  });

  it('reopens idempotently and keeps its data', () => {
    const file = join(dir, 'agent.db');
    const first = AgentDatabase.open(file);
    kv(first).setJson('trust', { version: 3 });
    first.close();
    const second = AgentDatabase.open(file);
    expect(second.schemaVersion).toBe(MIGRATIONS.length);
    expect(kv(second).getJson('trust')).toEqual({ version: 3 });
    second.close();
    second.close(); // a second close is harmless
  });

  it('runs only the migrations appended since the last open', () => {
    const file = join(dir, 'agent.db');
    const v1 = ['CREATE TABLE a (x INTEGER)'];
    AgentDatabase.open(file, { migrations: v1 }).close();
    // Re-running the first migration would fail: the table exists.
    const db = AgentDatabase.open(file, { migrations: [...v1, 'CREATE TABLE b (y INTEGER)', 'INSERT INTO b VALUES (7)'] });
    expect(db.schemaVersion).toBe(3);
    expect(tables(db)).toEqual(['a', 'b']);
    db.close();
  });

  it('rolls a failing migration back whole, leaving the previous version', () => {
    const file = join(dir, 'agent.db');
    const v1 = ['CREATE TABLE a (x INTEGER)'];
    AgentDatabase.open(file, { migrations: v1 }).close();
    expect(() => AgentDatabase.open(file, { migrations: [...v1, 'CREATE TABLE b (y INTEGER); SELECT nope FROM nowhere'] })).toThrow(
      /nowhere/,
    );
    const db = AgentDatabase.open(file, { migrations: v1 });
    expect(db.schemaVersion).toBe(1);
    expect(tables(db)).toEqual(['a']);
    db.close();
  });

  it('refuses a database written by a newer agent', () => {
    const file = join(dir, 'agent.db');
    AgentDatabase.open(file, { migrations: ['CREATE TABLE a (x)', 'CREATE TABLE b (y)'] }).close();
    expect(() => AgentDatabase.open(file, { migrations: ['CREATE TABLE a (x)'] })).toThrow(/newer agent/);
  });

  it('kv stores, replaces and deletes JSON documents', () => {
    const db = AgentDatabase.open(join(dir, 'agent.db'));
    const store = kv(db);
    expect(store.getJson('missing')).toBeUndefined();
    store.setJson('serial', { device: 4 });
    store.setJson('serial', { device: 5 });
    expect(store.getJson<{ device: number }>('serial')?.device).toBe(5);
    store.delete('serial');
    expect(store.getJson('serial')).toBeUndefined();
    expect(() => store.setJson('bad', undefined)).toThrow(/not JSON/);
    db.close();
  });
});

describe('writeFileAtomic', () => {
  it('writes, replaces and leaves no temp files behind', async () => {
    const file = join(dir, 'trust.json');
    await writeFileAtomic(file, '{"version":1}');
    await writeFileAtomic(file, Buffer.from('{"version":2}'), 0o600);
    expect(await readFile(file, 'utf8')).toBe('{"version":2}');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readdir(dir)).toEqual(['trust.json']);
  });

  it('rejects when the directory is missing', async () => {
    await expect(writeFileAtomic(join(dir, 'nested', 'x.json'), 'x')).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await readdir(dir)).toEqual([]);
  });

  it('cleans up the temp file when the rename fails', async () => {
    const target = join(dir, 'occupied');
    await mkdir(join(target, 'child'), { recursive: true }); // rename(file, non-empty dir) fails
    await expect(writeFileAtomic(target, 'data')).rejects.toThrow();
    expect(await readdir(dir)).toEqual(['occupied']);
  });
});

describe('fsyncDir and removeQuietly', () => {
  it('fsyncs a directory and removes paths without complaint', async () => {
    await fsyncDir(dir);
    await writeFile(join(dir, 'f'), 'x');
    await removeQuietly(join(dir, 'f'));
    await removeQuietly(join(dir, 'never-existed'));
    expect(await readdir(dir)).toEqual([]);
  });
});
