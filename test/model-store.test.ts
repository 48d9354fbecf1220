import { createHash } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify } from '../agent/rollout/errors.js';
import { ModelStore, StoreError } from '../agent/rollout/model-store.js';

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

  it('fails a pull that cannot fit with a retryable, clear error naming both figures', async () => {
    const store = await storeWith([]);
    const err = await store.ensureSpace(2 ** 52).catch((e: unknown) => e);
    expect((err as StoreError).code).toBe('NO_SPACE');
    expect((err as Error).message).toMatch(/not enough disk space .*needs [\d.]+ MiB with margin, [\d.]+ MiB are free/);
    expect(classify(err)).toMatchObject({ status: 'failed', retryable: true });
    await expect(store.ensureSpace(1024)).resolves.toBeUndefined();
  });
});
