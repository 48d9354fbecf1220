import { createHash } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify } from '../agent/rollout/errors.js';
import { ModelStore, StoreError } from '../agent/rollout/model-store.js';
import { NoSpaceError } from '../agent/store/no-space.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function storeWith(versions: number[]): Promise<ModelStore> {
  const store = new ModelStore(await mkdtemp(join(tmpdir(), 'edgefleet-store-')));
  await store.init();
  for (const v of versions) {
    const bytes = Buffer.from(`model ${v}`);
    await writeFile(store.stagingFile(sha(bytes)), bytes);
    await store.install('m', v, sha(bytes), { fake: 'envelope' });
  }
  return store;
}

describe('model store', () => {
  it('installs with the manifest written last and lists what is complete', async () => {
    const store = await storeWith([1, 2]);
    expect((await store.list()).map((v) => v.version).sort()).toEqual([1, 2]);
    expect(await store.readManifest('m', 1)).toEqual({ sha256: sha(Buffer.from('model 1')), envelope: { fake: 'envelope' } });
  });

  it('refuses and removes a file that changed on disk since it was verified', async () => {
    const store = await storeWith([1]);
    await writeFile(join(store.root, 'm', '1', 'model.onnx'), 'tampered');
    const err = await store.readVerified('m', 1, sha(Buffer.from('model 1'))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreError);
    expect((err as StoreError).code).toBe('FILE_HASH');
    expect(classify(err)).toMatchObject({ status: 'rejected', event: 'verify.failed', retryable: false });
    expect(await store.list()).toEqual([]);
  });

  it('prunes all but the versions to keep', async () => {
    const store = await storeWith([1, 2, 3]);
    expect(await store.prune('m', [2, 3])).toEqual([1]);
    expect((await store.list()).map((v) => v.version).sort()).toEqual([2, 3]);
    await expect(readFile(join(store.root, 'm', '1', 'model.onnx'))).rejects.toThrow();
  });

  it('fails a pull that cannot fit with a retryable, clear error naming the filesystem, the file and both figures', async () => {
    const store = await storeWith([]);
    const err = await store.ensureSpace('a'.repeat(64), 2 ** 52).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoSpaceError);
    expect((err as Error).message).toMatch(/^no space left on \S+ for \S+\/staging\/a{64}\.part: needs \d+ bytes \(\d+ bytes free\); the artifact is 4503599627370496 bytes, 0 are staged/);
    expect(classify(err)).toMatchObject({ code: 'NO_SPACE', status: 'failed', retryable: true, untilFixed: true });
    await expect(store.ensureSpace('a'.repeat(64), 1024)).resolves.toBeUndefined();
  });

  it('counts what a staging file already holds as not needed again', async () => {
    const store = await storeWith([]);
    const sha256 = 'b'.repeat(64);
    await writeFile(store.stagingFile(sha256), Buffer.alloc(1 << 20, 7));
    const err = await store.ensureSpace(sha256, 2 ** 52).catch((e: unknown) => e);
    expect((err as NoSpaceError).message).toContain(`${1 << 20} are staged`);
  });
});
