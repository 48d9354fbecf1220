import { mkdir, writeFile, rm, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { scaleModel, writeModelTree } from '../models/onnx/zoo.js';
import { getJson, startTestAgent, waitFor, type TestAgent } from './helpers/agent.js';

let t: TestAgent | undefined;
afterEach(async () => {
  await t?.close();
  t = undefined;
});

const states = async (url: string, name: string): Promise<Record<string, string>> => {
  const { status, json } = await getJson(`${url}/v1/models/${name}`);
  if (status !== 200) return {};
  return Object.fromEntries(json.model_version_status.map((s: { version: string; state: string }) => [s.version, s.state]));
};

describe('models.dir repository', () => {
  it('serves the latest version by default and switches to a new one once it is warm', async () => {
    t = await startTestAgent({}, async (dir) => {
      await writeModelTree(dir, 'scale', 1, scaleModel(1));
      await writeModelTree(dir, 'scale', 2, scaleModel(2));
    });
    expect(await states(t.url, 'scale')).toEqual({ '2': 'AVAILABLE' });
    await writeModelTree(t.modelsDir, 'scale', 3, scaleModel(3));
    await waitFor(async () => (await states(t!.url, 'scale'))['3'] === 'AVAILABLE', 10_000, 'version 3');
    await waitFor(async () => Object.keys(await states(t!.url, 'scale')).length === 1, 10_000, 'version 2 unloaded');
  });

  it('keeps the old version serving when a new one fails to load, and reports why', async () => {
    t = await startTestAgent({}, async (dir) => {
      await writeModelTree(dir, 'scale', 1, scaleModel(1));
    });
    await mkdir(join(t.modelsDir, 'scale', '2'), { recursive: true });
    await writeFile(join(t.modelsDir, 'scale', '2', 'model.onnx'), Buffer.from('this is not an ONNX model'));
    const status = await waitFor(async () => {
      const { json } = await getJson(`${t!.url}/v1/models/scale`);
      return json.model_version_status.find((s: { version: string; state: string }) => s.version === '2' && s.state === 'END');
    });
    expect(status.status.error_code).toBe('UNKNOWN');
    expect(status.status.error_message).toMatch(/could not load/);
    expect((await states(t.url, 'scale'))['1']).toBe('AVAILABLE');
    const ready = await getJson(`${t.url}/v2/models/scale/ready`);
    expect(ready).toMatchObject({ status: 200, json: { version: '1', ready: true } });
  });

  it('never loads a file that is still being written', async () => {
    t = await startTestAgent({ models: { settleMs: 1500 } }, async (dir) => {
      const old = new Date(Date.now() - 60_000);
      await utimes(await writeModelTree(dir, 'scale', 1, scaleModel(1)), old, old);
    });
    const bytes = scaleModel(2);
    const file = join(t.modelsDir, 'scale', '2', 'model.onnx');
    await mkdir(join(t.modelsDir, 'scale', '2'), { recursive: true });
    // Copy slowly in pieces, as a scp over a slow link would, touching the mtime each time.
    for (let i = 0; i < 4; i++) {
      await writeFile(file, bytes.subarray(0, Math.floor((bytes.length * (i + 1)) / 5)));
      await new Promise((r) => setTimeout(r, 300));
      expect(Object.keys(await states(t.url, 'scale'))).toEqual(['1']);
    }
    await writeFile(file, bytes);
    await waitFor(async () => (await states(t!.url, 'scale'))['2'] === 'AVAILABLE', 10_000, 'complete version 2');
  });

  it('honours the all and specific version policies and version labels', async () => {
    t = await startTestAgent(
      {
        models: {
          config: {
            every: { versionPolicy: { all: {} }, labels: { stable: 1, canary: 2 } },
            pinned: { versionPolicy: { specific: { versions: [1] } } },
          },
        },
      },
      async (dir) => {
        for (const v of [1, 2]) {
          await writeModelTree(dir, 'every', v, scaleModel(v));
          await writeModelTree(dir, 'pinned', v, scaleModel(v));
        }
      },
    );
    expect(await states(t.url, 'every')).toEqual({ '1': 'AVAILABLE', '2': 'AVAILABLE' });
    expect(await states(t.url, 'pinned')).toEqual({ '1': 'AVAILABLE' });
    const label = await getJson(`${t.url}/v1/models/every/labels/canary`);
    expect(label.json.model_version_status).toEqual([{ version: '2', state: 'AVAILABLE', status: { error_code: 'OK', error_message: '' } }]);
    expect((await getJson(`${t.url}/v1/models/every/labels/nope`)).status).toBe(404);
  });

  it('unloads a version whose folder is removed', async () => {
    t = await startTestAgent({ models: { versionPolicy: { all: {} } } }, async (dir) => {
      await writeModelTree(dir, 'scale', 1, scaleModel(1));
      await writeModelTree(dir, 'scale', 2, scaleModel(2));
    });
    await rm(join(t.modelsDir, 'scale', '2'), { recursive: true });
    await waitFor(async () => JSON.stringify(await states(t!.url, 'scale')) === '{"1":"AVAILABLE"}', 10_000, 'version 2 gone');
  });

  it('treats an old file as settled at start, without waiting', async () => {
    t = await startTestAgent({ models: { settleMs: 60_000 } }, async (dir) => {
      const file = await writeModelTree(dir, 'scale', 1, scaleModel(1));
      const old = new Date(Date.now() - 120_000);
      await utimes(file, old, old);
    });
    expect(await states(t.url, 'scale')).toEqual({ '1': 'AVAILABLE' });
  });
});
