import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlockProgress, clearArtifactProgress } from '../agent/rollout/block-progress.js';
import { InOrderHash, readBackSha256 } from '../agent/rollout/file-hash.js';
import { StagingFile } from '../agent/rollout/staging-file.js';
import { AgentDatabase } from '../agent/store/database.js';

const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-pull-parts-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('InOrderHash', () => {
  const blocks = Array.from({ length: 6 }, () => randomBytes(1000));
  const whole = sha256(Buffer.concat(blocks));

  it('gives the whole-file digest whatever order the blocks are verified in', () => {
    for (const order of [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 1, 5, 3, 4]]) {
      const h = new InOrderHash();
      for (const i of order) h.add(i, blocks[i] as Buffer);
      expect(h.digest(6), order.join()).toBe(whole);
    }
  });

  it('has no digest until every block is in', () => {
    const h = new InOrderHash();
    for (const i of [0, 1, 3, 4, 5]) h.add(i, blocks[i] as Buffer);
    expect(h.digest(6)).toBeUndefined();
  });

  it('drops itself once the blocks waiting behind a gap pass the limit, so the file is read back instead', () => {
    const h = new InOrderHash(2500);
    for (const i of [1, 2]) h.add(i, blocks[i] as Buffer); // 2000 bytes waiting: kept
    h.add(3, blocks[3] as Buffer); // 3000: dropped
    for (const i of [0, 4, 5]) h.add(i, blocks[i] as Buffer);
    expect(h.digest(6)).toBeUndefined();
  });

  it('reads a file back in chunks when there is no running hash', async () => {
    const data = randomBytes(2.5 * 1024 * 1024);
    const { file } = await StagingFile.open(join(dir, 'a.part'), data.length);
    await file.write(data, 0);
    expect(await readBackSha256(file, data.length)).toBe(sha256(data));
    expect(await readBackSha256(file, 1000)).toBe(sha256(data.subarray(0, 1000)));
    await file.close();
  });
});

describe('StagingFile', () => {
  it('creates a sparse file of the artifact size, and keeps one of that size on reopening', async () => {
    const path = join(dir, 'staging', 'x.part');
    const first = await StagingFile.open(path, 10_000);
    expect(first.kept).toBe(false);
    expect(await first.file.size()).toBe(10_000);
    await first.file.write(Buffer.from('hello'), 4096);
    await first.file.sync();
    await first.file.close();
    const again = await StagingFile.open(path, 10_000);
    expect(again.kept).toBe(true);
    const buf = Buffer.alloc(5);
    expect(await again.file.read(buf, 4096)).toBe(5);
    expect(buf.toString()).toBe('hello');
    await again.file.close();
  });

  it('does not keep a file of another size: it is cut to the artifact size', async () => {
    const path = join(dir, 'y.part');
    await writeFile(path, randomBytes(300));
    const { file, kept } = await StagingFile.open(path, 200);
    expect(kept).toBe(false);
    await file.close();
    expect((await stat(path)).size).toBe(200);
    expect((await readFile(path)).length).toBe(200);
  });
});

describe('BlockProgress', () => {
  let db: AgentDatabase;
  beforeEach(() => {
    db = AgentDatabase.open(join(dir, 'agent.db'));
  });
  afterEach(() => db.close());

  const rows = (sha: string): number[] =>
    db.db.prepare<[string], { idx: number }>('SELECT idx FROM artifact_blocks WHERE sha256 = ? ORDER BY idx').all(sha).map((r) => r.idx);

  function progress(sha: string, total: number, sync: () => Promise<void> = async () => {}) {
    const durable: number[] = [];
    const errors: unknown[] = [];
    const p = new BlockProgress({ db, sha256: sha, total, sync, onDurable: (n) => durable.push(n), onError: (e) => errors.push(e) });
    return { p, durable, errors };
  }

  it('records a block only after the fsync that covers it, batching what was written meanwhile', async () => {
    let release: () => void = () => {};
    const seenAtSync: number[][] = [];
    const { p, durable } = progress('a', 10, () => {
      seenAtSync.push(rows('a'));
      return new Promise<void>((r) => (release = r));
    });
    p.written(0);
    p.written(1); // written during the first fsync: waits for the next
    p.written(2);
    expect(rows('a')).toEqual([]);
    release();
    await new Promise((r) => setImmediate(r));
    expect(rows('a')).toEqual([0]);
    release();
    await p.settled();
    expect(rows('a')).toEqual([0, 1, 2]);
    expect(seenAtSync).toEqual([[], [0]]);
    expect(durable).toEqual([1, 3]);
    expect(p.durable).toBe(3);
  });

  it('loads what an earlier pull recorded, ignoring indices outside the artifact, and clears one artifact only', async () => {
    const put = db.db.prepare('INSERT INTO artifact_blocks (sha256, idx) VALUES (?, ?)');
    for (const i of [0, 2, 7, -1]) put.run('a', i);
    put.run('b', 0);
    const { p } = progress('a', 5);
    expect([...p.load()].sort()).toEqual([0, 2]);
    expect(p.durable).toBe(2);
    p.clear();
    expect(rows('a')).toEqual([]);
    expect(rows('b')).toEqual([0]);
    clearArtifactProgress(db, 'b');
    expect(rows('b')).toEqual([]);
  });

  it('a failed fsync records nothing, reports once, and stops recording', async () => {
    const { p, errors } = progress('a', 5, async () => {
      throw new Error('EIO');
    });
    p.written(0);
    await p.settled();
    p.written(1);
    await p.settled();
    expect(rows('a')).toEqual([]);
    expect(errors).toHaveLength(1);
    expect((errors[0] as Error).message).toBe('EIO');
  });

  it('records nothing more once halted', async () => {
    const { p } = progress('a', 5);
    p.halt();
    p.written(0);
    await p.settled();
    expect(rows('a')).toEqual([]);
  });
});
