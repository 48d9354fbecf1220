/**
 * The dashboard's rollouts (issue 14 item 7): /api/rollouts and
 * /api/rollouts/{id} on real SQLite and PostgreSQL stores (records written
 * as the controller writes them), their 400s and 404s, no manifest bytes ever in
 * the JSON, and headless Chromium (Debian's /usr/bin/chromium through
 * playwright-core) rendering the list, a wave's gates and its devices'
 * states, with an operator's hostile reason and a device's hostile error
 * shown as text, and following a change to the record by itself.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DashboardServer, parseListen } from '../fleet/collector/http-server.js';
import { MAX_WAVE_DEVICES, rolloutDetail } from '../fleet/collector/rollout-view.js';
import type { RolloutDetail, RolloutListItem } from '../fleet/collector/rollout-view.js';
import { PostgresStore } from '../fleet/collector/postgres-store.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { DeviceState, FleetStore } from '../fleet/collector/store.js';
import type { Rollout, RolloutSpec } from '../fleet/rollout/planner.js';
import { newRollout, parseWaves } from '../fleet/rollout/planner.js';
import { reportedStateSchema } from '../protocol/index.js';
import { freshDatabase, postgresBin, postgresSkipReason, startPostgres, type PostgresServer } from './helpers/postgres.js';
import { chromiumSkip, launchChromium } from './helpers/chromium.js';

const SCREENSHOT = join(tmpdir(), 'edgefleet-dashboard-rollouts.png');
const HOSTILE = '<img src=x onerror=alert(1)>';
/** The manifest's payload: it must never reach the browser. */
const MANIFEST_BYTES = 'TUFOSUZFU1QtQllURVMtTVVTVC1OT1QtTEVBSw';
const envelope = { payloadType: 'application/vnd.edgefleet.manifest+json', payload: MANIFEST_BYTES, signatures: [{ keyid: 'k', sig: 'c2ln' }] };
const NOW = Date.now();
const MIN = 60_000;

function spec(over: Partial<RolloutSpec> = {}): RolloutSpec {
  return {
    group: 'lab', models: [{ name: 'mnist', version: 4, labels: ['stable'], manifest: envelope }], waves: parseWaves('100%'), canary: ['pi-01'],
    minApplied: 1, applyTimeoutMs: 15 * MIN, soakMs: 10 * MIN, maxErrorRate: 0.01, maxP99Increase: 0.25, p99SlackMs: 1, minRequests: 100,
    shadow: null, onFailure: 'pause', documentTtlMs: 86_400_000, ...over,
  };
}

type Desired = { source: 'device' | 'group'; serial: number; status: 'applied' | 'failed'; error: string | null; group?: string };

async function report(store: FleetStore, device: string, online: boolean, desired: Desired, mnist: { version: number; state: string; error?: string }[], groups = ['lab']): Promise<void> {
  const ts = new Date(NOW).toISOString();
  await store.upsertStatus(device, { online }, NOW);
  await store.upsertState(reportedStateSchema.parse({
    schema: 1, device, groups, ts, desired,
    models: mnist.map((m) => ({ name: 'mnist', version: m.version, state: m.state, labels: [], executionProvider: 'cpu', sha256: null, progress: 1, error: m.error ?? null })),
    agent: { version: '0.1.0', arch: 'arm64', startedAt: ts, executionProviders: { available: ['cpu'], unavailable: {} } },
  }), NOW);
}

const PLAN = ['pi-01', 'pi-02', 'pi-03', 'pi-04', 'pi-09'];

/** r1: canary wave passed its apply but failed p99 (paused, a hostile reason); wave 2 waiting. r0: an older one that succeeded. */
async function fill(store: FleetStore): Promise<Rollout> {
  const group = { source: 'group', group: 'lab', serial: 7, status: 'applied', error: null } as const;
  await report(store, 'pi-01', true, { source: 'device', serial: 12, status: 'applied', error: null }, [{ version: 4, state: 'serving' }]);
  await report(store, 'pi-02', true, { source: 'device', serial: 13, status: 'failed', error: HOSTILE }, [{ version: 3, state: 'serving' }, { version: 4, state: 'rejected', error: HOSTILE }]);
  await report(store, 'pi-03', false, group, [{ version: 3, state: 'serving' }]);
  // Planned, then moved to another group; pi-09 planned and never heard from since (its rows pruned, say).
  await report(store, 'pi-04', true, { source: 'group', group: 'field', serial: 3, status: 'applied', error: null }, [{ version: 3, state: 'serving' }], ['field']);
  await store.upsertStatus('pi-05', { online: true }, NOW);

  const old = newRollout('r0', spec({ models: [{ name: 'mnist', version: 3, labels: [], manifest: envelope }] }), PLAN, NOW - 86_400_000);
  Object.assign(old, { status: 'succeeded', phase: 'done', wave: 2, previous: [] });
  await store.rollouts.save(old, null);

  const r = newRollout('r1', spec(), PLAN, NOW - 30 * MIN);
  r.previous = [{ name: 'mnist', version: 3, labels: ['stable'], manifest: envelope }];
  Object.assign(r, { status: 'paused', phase: 'soak', wave: 0, reason: `wave 1: p99 gate: ${HOSTILE}` });
  const [canary, rest] = r.waves;
  if (canary === undefined || rest === undefined) throw new Error('expected two waves');
  Object.assign(canary, {
    startedAt: NOW - 25 * MIN, appliedAt: NOW - 20 * MIN, outcome: 'failed', gates: [
      { name: 'applied', value: 1, threshold: 1, ok: true, detail: '1/1 devices applied (need 100%)' },
      { name: 'requests', value: 250, threshold: 100, ok: true, detail: '250 requests on the new versions during the soak (need 100)' },
      { name: 'error-rate', value: 0.004, threshold: 0.01, ok: true, detail: '1 errors in 250 requests (0.40%, at most 1%)' },
      { name: 'p99', value: 0.8, threshold: 0.25, ok: false, detail: `mnist:4: +80% ${HOSTILE}` },
    ],
  });
  Object.assign(rest, { startedAt: NOW - 5 * MIN, outcome: 'running', gates: [{ name: 'requests', value: 40, threshold: 100, ok: null, detail: 'waiting for requests' }] });
  await store.rollouts.save(r, null, [
    { target: 'device:pi-01', serial: 12, payload: Buffer.from(MANIFEST_BYTES) },
    { target: 'device:pi-02', serial: 13, payload: Buffer.from(MANIFEST_BYTES) },
    { target: 'device:pi-03', serial: 14, payload: Buffer.from(MANIFEST_BYTES) },
  ]);
  return r;
}

describe('rolloutDetail', () => {
  it('tallies every device of a wave and lists the first MAX_WAVE_DEVICES', () => {
    const plan = Array.from({ length: 1200 }, (_, i) => `d-${String(i).padStart(4, '0')}`);
    const r = newRollout('big', spec({ canary: [] }), plan, NOW);
    const serving = (device: string): DeviceState => ({
      device, online: true, groups: ['lab'], desired: { source: 'device', serial: 5, status: 'applied', error: null },
      models: [{ name: 'mnist', version: 4, state: 'serving', labels: [], executionProvider: 'cpu', sha256: null, progress: 1, error: null }],
    });
    const detail = rolloutDetail(r, plan.slice(0, 900).map(serving), new Map(plan.map((d) => [d, 5])));
    const [wave] = detail.waves;
    expect(wave?.states).toHaveLength(MAX_WAVE_DEVICES);
    expect(wave?.states.map((x) => x.device)).toEqual(wave?.devices.slice(0, MAX_WAVE_DEVICES));
    expect(wave?.tally).toEqual({ devices: 1200, applied: 900, servesNew: 900, offline: 0, failed: 0 });
    expect(JSON.stringify(detail)).not.toContain(MANIFEST_BYTES);
  });
});

let dir: string;
let server: PostgresServer | undefined;
const pgSkip = postgresSkipReason();
const browserSkip = chromiumSkip('the dashboard rollouts test');

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-dash-rollouts-'));
  if (pgSkip === false) server = await startPostgres(postgresBin() as string);
}, 90_000);
afterAll(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const backends: { name: string; skip: string | false; open(): Promise<FleetStore> }[] = [
  { name: 'SQLite', skip: false, open: async () => new SqliteStore(join(dir, 'fleet.db')) },
  { name: 'PostgreSQL', skip: pgSkip, open: async () => new PostgresStore(await freshDatabase(server as PostgresServer)) },
];

for (const backend of backends) describe.skipIf(backend.skip)(`dashboard rollouts (${backend.name})`, () => {
  let store: FleetStore;
  let dashboard: DashboardServer;
  let r1: Rollout;
  const get = async (path: string): Promise<{ status: number; body: any; text: string }> => {
    const res = await fetch(`${dashboard.url}${path}`);
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text), text };
  };

  beforeAll(async () => {
    store = await backend.open();
    await store.init();
    r1 = await fill(store);
    dashboard = new DashboardServer({ store, listen: parseListen('127.0.0.1:0'), log: pino({ level: 'silent' }) });
    await dashboard.start();
  });

  afterAll(async () => {
    await dashboard?.stop();
    await store?.close();
  });

  it('lists rollouts newest first, without manifests', async () => {
    const { status, body, text } = await get('/api/rollouts');
    expect(status).toBe(200);
    const rows = body.rollouts as RolloutListItem[];
    expect(rows.map((r) => r.id)).toEqual(['r1', 'r0']);
    expect(rows[0]).toMatchObject({
      group: 'lab', models: [{ name: 'mnist', version: 4, labels: ['stable'] }], previous: [{ name: 'mnist', version: 3 }],
      status: 'paused', phase: 'soak', wave: 0, waveCount: 2, reason: `wave 1: p99 gate: ${HOSTILE}`,
    });
    expect(text).not.toContain(MANIFEST_BYTES);
    expect(text).not.toContain('manifest');
    expect((await get('/api/rollouts?limit=1')).body.rollouts.map((r: RolloutListItem) => r.id)).toEqual(['r1']);
    expect((await get('/api/rollouts?active=true')).body.rollouts.map((r: RolloutListItem) => r.id)).toEqual(['r1']);
  });

  it('answers bad parameters with 400 and why', async () => {
    for (const [query, why] of [
      ['limit=0', /limit must be an integer from 1 to 100, got "0"/], ['limit=abc', /limit must be/], ['limit=101', /limit must be/],
      ['active=maybe', /active must be true or false/], ['sort=id', /unknown parameter "sort"/],
    ] as const) {
      const { status, body } = await get(`/api/rollouts?${query}`);
      expect(status, query).toBe(400);
      expect(body.error, query).toMatch(why);
    }
    const both = await get('/api/rollouts?limit=-1&x=1');
    expect(both.body.error).toMatch(/unknown parameter "x".*; limit must be/);
    for (const path of ['/api/rollouts/-dash-first', '/api/rollouts/a%20b', '/api/rollouts/r1/waves', '/api/rollouts/']) {
      const { status, body } = await get(path);
      expect(status, path).toBe(400);
      expect(body.error, path).toMatch(/is not a rollout id/);
    }
    expect((await get('/api/rollouts/r1?verbose=1')).status).toBe(400);
  });

  it('answers an unknown rollout with 404 naming it', async () => {
    const { status, body } = await get('/api/rollouts/no-such-rollout');
    expect(status).toBe(404);
    expect(body).toEqual({ error: 'no rollout "no-such-rollout"' });
  });

  it('gives a rollout with its gates and each wave device\'s reported state, without manifests', async () => {
    const { status, body, text } = await get('/api/rollouts/r1');
    expect(status).toBe(200);
    expect(text).not.toContain(MANIFEST_BYTES);
    expect(text).not.toContain('manifest');
    const r = body as RolloutDetail;
    expect(r).toMatchObject({ id: 'r1', status: 'paused', reason: r1.reason, previous: [{ name: 'mnist', version: 3, labels: ['stable'] }] });
    expect(r.spec.models).toEqual([{ name: 'mnist', version: 4, labels: ['stable'] }]);
    const [canary, rest] = r.waves;
    expect(canary?.gates.map((g) => [g.name, g.ok])).toEqual([['applied', true], ['requests', true], ['error-rate', true], ['p99', false]]);
    expect(canary?.tally).toEqual({ devices: 1, applied: 1, servesNew: 1, offline: 0, failed: 0 });
    expect(canary?.states).toEqual([{
      device: 'pi-01', reported: true, inGroup: true, online: true, desired: { source: 'device', serial: 12, status: 'applied', error: null }, documentSerial: 12,
      applied: true, servesNew: true, models: [expect.objectContaining({ name: 'mnist', version: 4, state: 'serving' })],
    }]);
    expect([...(rest?.devices ?? [])].sort()).toEqual(['pi-02', 'pi-03', 'pi-04', 'pi-09']);
    expect(rest?.tally).toEqual({ devices: 4, applied: 0, servesNew: 0, offline: 1, failed: 1 });
    const state = (d: string) => rest?.states.find((s) => s.device === d);
    expect(state('pi-02')).toMatchObject({ inGroup: true, applied: false, servesNew: false, documentSerial: 13, desired: { status: 'failed', error: HOSTILE } });
    expect(state('pi-03')).toMatchObject({ inGroup: true, online: false, applied: false, documentSerial: 14, desired: { source: 'group', serial: 7 } });
    expect(state('pi-04')).toMatchObject({ reported: true, inGroup: false, online: true, desired: { group: 'field', serial: 3 }, documentSerial: null, servesNew: false });
    // A device of the plan the collector has nothing of: known to be unknown.
    expect(state('pi-09')).toEqual({
      device: 'pi-09', reported: false, inGroup: false, online: null, desired: null, documentSerial: null, applied: false, servesNew: false, models: [],
    });
  });

  it('reads only the devices asked for, without telemetry', async () => {
    const states = await store.deviceStates(['pi-05', 'pi-01', 'pi-09', 'pi-04']);
    expect(states.map((s) => s.device)).toEqual(['pi-01', 'pi-04', 'pi-05']);
    expect(states[2]).toEqual({ device: 'pi-05', online: true, groups: [], desired: null, models: [] });
    expect(states[0]).toMatchObject({ online: true, groups: ['lab'], desired: { source: 'device', serial: 12 } });
    expect(await store.deviceStates([])).toEqual([]);
  });

  // The page reads the same JSON whichever the store: rendered once.
  const skip = backend.name === 'SQLite' ? browserSkip : 'rendered on SQLite';
  describe.skipIf(skip !== false)(`in Chromium${skip ? ` (skipped: ${skip})` : ''}`, () => {
    let browser: Browser;
    beforeAll(async () => {
      browser = await launchChromium();
    }, 60_000);
    afterAll(async () => {
      await browser?.close();
    });

    it('renders the list, the newest rollout\'s gates and device states, hostile text as text, and follows changes', async () => {
      const page = await browser.newPage();
      const dialogs: string[] = [];
      page.on('dialog', (d) => {
        dialogs.push(d.message());
        void d.dismiss();
      });
      const problems: string[] = [];
      page.on('pageerror', (e) => problems.push(e.message));
      await page.goto(dashboard.url);

      const list = page.locator('#rollouts tbody tr');
      await expect.poll(() => list.count(), { timeout: 10_000 }).toBe(2);
      expect(await list.evaluateAll((rows) => rows.map((r) => r.getAttribute('data-rollout')))).toEqual(['r1', 'r0']);
      const first = await list.first().locator('td').allTextContents();
      expect(first.slice(0, 6)).toEqual(['r1', 'lab', 'mnist:3 -> mnist:4', 'paused', 'wave 1/2', `wave 1: p99 gate: ${HOSTILE}`]);
      expect(await list.first().getAttribute('class')).toBe('selected');

      const detail = page.locator('#rollout-detail .card[data-rollout="r1"]');
      await detail.waitFor({ timeout: 10_000 });
      await expect.poll(() => detail.locator('p.reason').textContent()).toBe(`reason: wave 1: p99 gate: ${HOSTILE}`);
      const gate = (wave: number, name: string) => detail.locator(`section[data-wave="${wave}"] tr[data-gate="${name}"] td`);
      expect(await gate(0, 'p99').allTextContents()).toEqual(['p99', '+80%', '<= +25%', 'FAIL', `mnist:4: +80% ${HOSTILE}`]);
      expect(await gate(0, 'error-rate').allTextContents()).toEqual(['error-rate', '0.40%', '<= 1%', 'ok', '1 errors in 250 requests (0.40%, at most 1%)']);
      expect(await gate(0, 'applied').allTextContents()).toEqual(['applied', '100%', '>= 100%', 'ok', '1/1 devices applied (need 100%)']);
      expect(await gate(1, 'requests').allTextContents()).toEqual(['requests', '40', '>= 100', 'waiting', 'waiting for requests']);

      const device = (wave: number, id: string) => detail.locator(`section[data-wave="${wave}"] tr[data-device="${id}"] td`);
      expect(await device(0, 'pi-01').allTextContents()).toEqual(['pi-01', 'yes', 'device 12 applied', '12', 'yes', 'yes', 'mnist:4 serving']);
      expect(await device(1, 'pi-02').allTextContents()).toEqual(['pi-02', 'yes', 'device 13 failed', '13', 'no', 'no', 'mnist:3 servingmnist:4 rejected']);
      expect(await device(1, 'pi-02').nth(2).locator('span').getAttribute('title')).toBe(HOSTILE);
      expect(await device(1, 'pi-03').allTextContents()).toEqual(['pi-03', 'no', 'group 7 applied', '14', 'no', 'no', 'mnist:3 serving']);
      expect(await device(1, 'pi-04').allTextContents()).toEqual(['pi-04', 'yes', 'group 3 applied not in the group', 'not yet', 'no', 'no', 'mnist:3 serving']);
      expect(await device(1, 'pi-09').allTextContents()).toEqual(['pi-09', '?', 'never heard from', 'not yet', 'no', 'no', '-']);
      expect(await detail.locator('section[data-wave="1"] h3').textContent()).toMatch(/^Wave 2 of 2: running, 4 device\(s\), 0 applied, 0 serving the new versions, 1 failed, 1 offline/);

      await page.screenshot({ path: SCREENSHOT, fullPage: true });

      // The hostile strings stayed text: no element was made of them, nothing ran.
      expect(await page.locator('img').count()).toBe(0);
      expect(dialogs).toEqual([]);

      // Another rollout, chosen by its id.
      await list.nth(1).locator('button').click();
      await page.locator('#rollout-detail .card[data-rollout="r0"]').waitFor({ timeout: 10_000 });
      expect(await page.locator('#rollouts tbody tr.selected').getAttribute('data-rollout')).toBe('r0');
      await list.first().locator('button').click();
      await detail.waitFor({ timeout: 10_000 });

      // The record moves on (resumed, the wave soaks again): the page follows by itself.
      const moved = structuredClone(r1);
      Object.assign(moved, { status: 'running', reason: null, revision: r1.revision + 1 });
      const canary = moved.waves[0];
      if (canary) canary.gates = canary.gates.map((g) => (g.name === 'p99' ? { ...g, value: 0.1, ok: true, detail: 'mnist:4: +10%' } : g));
      await store.rollouts.save(moved, r1.revision);
      await expect.poll(() => gate(0, 'p99').nth(3).textContent(), { timeout: 12_000 }).toBe('ok');
      expect(await list.first().locator('td').nth(4).textContent()).toBe('wave 1/2, soak');
      expect(await detail.locator('p.reason').count()).toBe(0);
      expect(problems).toEqual([]);
      await page.close();
    }, 60_000);
  });
});
