/**
 * The collector's dashboard end to end: a simulated device publishes to a
 * real Mosquitto, the collector stores it, and headless Chromium (Debian's
 * /usr/bin/chromium through playwright-core) renders the page from the
 * collector's HTTP server: the fleet table shows the device, the charts
 * have points, and the page refreshes by itself.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector } from '../fleet/collector/collector.js';
import { DashboardServer, parseListen } from '../fleet/collector/http-server.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import { DEFAULT_TOPIC_ROOT, reportedStateSchema, telemetryBatchSchema, topics } from '../protocol/index.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';
import { chromiumSkip, launchChromium } from './helpers/chromium.js';

const SCREENSHOT = join(tmpdir(), 'edgefleet-dashboard.png');
const ROOT = DEFAULT_TOPIC_ROOT;

const skip = mosquittoSkipReason() || chromiumSkip('the dashboard test');
const at = (ms: number): string => new Date(ms).toISOString();

/**
 * Three minutes of telemetry, one batch every 10 s: an inference and a health point each. (Within the
 * collector's clock-skew bound: older device times would be stored as the arrival time.)
 */
function history(device: string, now: number): Buffer[] {
  return Array.from({ length: 20 }, (_, i) => {
    const ts = at(now - (19 - i) * 10_000);
    const wave = Math.sin(i / 3);
    const points = [
      { seq: 2 * i + 1, ts, kind: 'inference', model: 'mnist', version: 3, intervalS: 10, count: 500 + i, errors: i === 12 ? 3 : 0,
        latencyMs: { p50: 0.5 + 0.1 * wave, p90: 0.9, p99: 1.4 + 0.4 * wave, max: 3, mean: 0.6 } },
      { seq: 2 * i + 2, ts, kind: 'health', cpuPct: 30 + 15 * wave, load1: 0.4, memUsedBytes: (400 + 10 * i) * 1e6, memTotalBytes: 1e9,
        tempC: 52 + 3 * wave, diskFreeBytes: 5e9, rssBytes: 8e7, uptimeS: 3600 + 60 * i, gpus: [] },
    ];
    return Buffer.from(JSON.stringify(telemetryBatchSchema.parse({ schema: 1, device, points })));
  });
}

function reported(device: string, now: number): Buffer {
  return Buffer.from(JSON.stringify(reportedStateSchema.parse({
    schema: 1, device, groups: ['lab'], ts: at(now),
    desired: { source: 'group', group: 'lab', serial: 12, status: 'applied', error: null },
    models: [{ name: 'mnist', version: 3, state: 'serving', labels: ['stable'], executionProvider: 'cpu', sha256: null, progress: 1, error: null }],
    agent: { version: '0.1.0', arch: 'arm64', startedAt: at(now - 3_600_000), executionProviders: { available: ['cpu'], unavailable: {} } },
  })));
}

async function simulate(client: MqttClient, device: string): Promise<void> {
  const now = Date.now();
  const topic = (channel: 'status' | 'state' | 'events' | 'telemetry'): string => topics.device(ROOT, device, channel);
  await client.publishAsync(topic('status'), JSON.stringify({ online: true, ts: at(now) }), { qos: 1, retain: true });
  await client.publishAsync(topic('state'), reported(device, now), { qos: 1, retain: true });
  await client.publishAsync(topic('events'), JSON.stringify({ ts: at(now - 120_000), type: 'activated', model: 'mnist', version: 3 }), { qos: 1 });
  for (const batch of history(device, now)) await client.publishAsync(topic('telemetry'), batch, { qos: 1 });
}

describe.skipIf(skip !== false)(`dashboard${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let broker: Mosquitto;
  let dir: string;
  let store: SqliteStore;
  let collector: Collector;
  let dashboard: DashboardServer;
  let device: MqttClient;
  let browser: Browser;

  beforeAll(async () => {
    broker = await startMosquitto();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-dashboard-'));
    store = new SqliteStore(join(dir, 'fleet.db'));
    await store.init();
    const log = pino({ level: 'silent' });
    collector = new Collector({
      broker: { url: broker.url, topicRoot: ROOT, tls: {} }, store, clientId: 'dashboard-test', shareGroup: 'dashboard',
      sessionExpiryS: 0, retentionMs: null, log,
    });
    await collector.start();
    dashboard = new DashboardServer({ store, listen: parseListen('127.0.0.1:0'), log });
    await dashboard.start();
    device = await mqtt.connectAsync(broker.url, { protocolVersion: 5, clientId: 'pi-dash-device' });
    await simulate(device, 'pi-dash');
    const until = Date.now() + 10_000;
    while (collector.stats.batches < 20 || collector.stats.states < 1) {
      if (Date.now() > until) throw new Error(`collector stored only ${collector.stats.batches} batches`);
      await new Promise((r) => setTimeout(r, 50));
    }
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await device?.endAsync();
    await dashboard?.stop();
    await collector?.stop();
    await store?.close();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('serves the JSON API', async () => {
    const page = (await (await fetch(`${dashboard.url}/api/devices?group=lab`)).json()) as { total: number; rows: any[] };
    const devices = page.rows;
    expect(page).toMatchObject({ total: 1, online: 1, offset: 0, limit: 100, sort: 'device', desc: false });
    expect(devices.map((d) => d.device)).toEqual(['pi-dash']);
    expect(devices[0]).toMatchObject({ online: true, desired: { serial: 12, status: 'applied' }, health: { memTotalBytes: 1e9 } });
    expect(devices[0]).toMatchObject({ dropped: { count: 0, lastAt: null }, outbox: null, quarantined: 0, overQuota: 0, clockSkewed: 0 });
    const from = Date.now() - 3_600_000;
    const series = (await (await fetch(`${dashboard.url}/api/devices/pi-dash/series?from=${from}&to=${Date.now()}`)).json()) as any;
    expect(series.inference).toHaveLength(20);
    expect(series.health).toHaveLength(20);
    const events = (await (await fetch(`${dashboard.url}/api/devices/pi-dash/events?from=${at(from)}`)).json()) as any[];
    expect(events.map((e) => e.type)).toEqual(['activated']);
    expect((await fetch(`${dashboard.url}/api/devices/pi-dash/series?from=yesterday`)).status).toBe(400);
    expect((await fetch(`${dashboard.url}/api/devices?model=Not_A_Model`)).status).toBe(400);
    expect((await fetch(`${dashboard.url}/api/nothing`)).status).toBe(404);
    expect((await fetch(`${dashboard.url}/`, { method: 'POST' })).status).toBe(405);
    const html = await fetch(`${dashboard.url}/`);
    expect(html.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(await html.text()).not.toMatch(/<(script|link)[^>]+(src|href)=/); // nothing loaded from elsewhere
  });

  it('renders the fleet table and charts with data in Chromium, and refreshes by itself', async () => {
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    const requests: string[] = [];
    const problems: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    page.on('pageerror', (e) => problems.push(e.message));
    page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
    await page.goto(dashboard.url);

    const row = page.locator('#fleet tbody tr[data-device="pi-dash"]');
    await row.waitFor({ timeout: 10_000 });
    const cells = await row.locator('td').allTextContents();
    expect(cells.slice(0, 5)).toEqual(['pi-dash', 'yes', 'lab', '12 applied', 'mnist:3 serving']);
    expect(Number(cells[5])).toBeGreaterThan(0); // p50 ms
    expect(cells[10]).toBe('59'); // memory %: 590 MB of 1 GB in the newest point

    const card = page.locator('.card[data-device="pi-dash"]');
    await card.locator('polyline').first().waitFor({ timeout: 10_000 });
    const counts = await card.locator('polyline').evaluateAll((lines) =>
      Object.fromEntries(lines.map((l) => [l.getAttribute('data-series'), Number(l.getAttribute('data-count'))])),
    );
    expect(counts).toEqual({ 'mnist p50': 20, 'mnist p99': 20, CPU: 20, memory: 20, temperature: 20 });
    const points = (await card.locator('polyline[data-series="mnist p99"]').getAttribute('points')) ?? '';
    expect(points.trim().split(/\s+/)).toHaveLength(20);
    await expect(card.locator('ul.events li').allTextContents()).resolves.toEqual([expect.stringContaining('activated mnist:3')]);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    // A device that reports after the page loaded appears without a reload.
    await simulate(device, 'pi-late');
    await page.locator('#fleet tbody tr[data-device="pi-late"]').waitFor({ timeout: 12_000 });
    expect(problems).toEqual([]);
    expect(requests.every((u) => u.startsWith(dashboard.url))).toBe(true);
    await context.close();
  });
});
