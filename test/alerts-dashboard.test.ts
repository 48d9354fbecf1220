/**
 * Alerts on the dashboard: GET /api/alerts (what the evaluator stored:
 * active first, resolved, the webhook outbox; a 400 for parameters), and
 * headless Chromium showing the active-alerts panel, marking the fleet
 * table's rows of devices with a firing alert (and no others), showing a
 * device's hostile error as text, and unmarking a device once its alert
 * resolves, by itself.
 */
import type { Browser } from 'playwright-core';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRules } from '../fleet/alerts/rules.js';
import { AlertService } from '../fleet/alerts/service.js';
import { DashboardServer, parseListen } from '../fleet/collector/http-server.js';
import { SqliteStore } from '../fleet/collector/sqlite-store.js';
import type { AlertsReport } from '../fleet/alerts/view.js';
import type { TelemetryPoint } from '../protocol/index.js';
import { formatTime, reportedStateSchema } from '../protocol/index.js';
import { waitFor } from './helpers/agent.js';
import { chromiumSkip, launchChromium } from './helpers/chromium.js';
import { storeBackends } from './helpers/stores.js';
import { webhookReceiver } from './helpers/webhook-receiver.js';

const HOSTILE = '<img src=x onerror=alert(1)>';
const log = pino({ level: 'silent' });
const { dir } = storeBackends('alerts-dashboard');

const hot = (seq: number, tempC: number): TelemetryPoint => ({
  kind: 'health', seq, ts: formatTime(Date.now()), tempC, cpuPct: 3, load1: 0, memUsedBytes: 4, memTotalBytes: 8, diskFreeBytes: 1, rssBytes: 1, uptimeS: 1, gpus: [],
});

async function reportDesired(store: SqliteStore, device: string, status: 'applied' | 'failed', error: string | null): Promise<void> {
  const ts = formatTime(Date.now());
  await store.upsertStatus(device, { online: true }, Date.now());
  await store.upsertState(reportedStateSchema.parse({
    schema: 1, device, groups: ['lab'], ts, desired: { source: 'device', serial: 4, status, error }, models: [],
    agent: { version: '0.1.0', arch: 'arm64', startedAt: ts, executionProviders: { available: ['cpu'], unavailable: {} } },
  }), Date.now());
}

describe('alerts on the dashboard', () => {
  let store: SqliteStore;
  let dashboard: DashboardServer;
  let alerts: AlertService;
  beforeAll(async () => {
    store = new SqliteStore(`${dir()}/dashboard.db`);
    await store.init();
    // A receiver that is down: its notifications wait, and the page says so.
    const hook = await webhookReceiver();
    await hook.down();
    const rules = parseRules(`
receivers: [{ name: hook, url: "${hook.url}" }]
rules:
  - { alert: EdgefleetTemperatureHigh, for: 0 }
  - { alert: EdgefleetDesiredFailed }
  - { alert: EdgefleetErrorRateHigh }
`);
    alerts = new AlertService({ store, rules, log, holder: 'test' });
    await reportDesired(store, 'pi-001', 'failed', HOSTILE);
    await store.insertPoints('pi-001', [hot(1, 90)]);
    await reportDesired(store, 'pi-002', 'applied', null);
    await store.insertPoints('pi-002', [hot(1, 88)]);
    await reportDesired(store, 'pi-003', 'applied', null);
    await alerts.tick(Date.now());
    await alerts.deliver(Date.now());
    dashboard = new DashboardServer({ store, listen: parseListen('127.0.0.1:0'), log });
    await dashboard.start();
  });
  afterAll(async () => {
    await dashboard?.stop();
    await alerts?.stop();
    await store?.close();
  });

  it('/api/alerts gives the active alerts, the resolved ones and the outbox; parameters get a 400', async () => {
    const res = await fetch(`${dashboard.url}/api/alerts`);
    expect(res.status).toBe(200);
    const report = (await res.json()) as AlertsReport;
    expect(report.active.map((a) => `${a.state} ${a.alertname} ${a.labels.device}`).sort()).toEqual([
      'firing EdgefleetDesiredFailed pi-001', 'firing EdgefleetTemperatureHigh pi-001', 'firing EdgefleetTemperatureHigh pi-002',
    ]);
    expect(report.active.find((a) => a.alertname === 'EdgefleetDesiredFailed')).toMatchObject({
      severity: 'critical', labels: { device: 'pi-001' }, description: `pi-001 reports its desired-state document (serial 4, from its device) failed: ${HOSTILE}.`,
    });
    expect(report.resolved).toEqual([]);
    expect(report.outbox).toEqual([expect.objectContaining({ receiver: 'hook', waiting: 3, failed: 0 })]);
    const bad = await fetch(`${dashboard.url}/api/alerts?limit=5`);
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: '/api/alerts takes no parameters, got "limit"' });
  });

  describe.skipIf(chromiumSkip('the dashboard alerts test'))('in Chromium', () => {
    let browser: Browser;
    beforeAll(async () => {
      browser = await launchChromium();
    }, 30_000);
    afterAll(async () => {
      await browser?.close();
    });

    it('lists the active alerts, marks the devices that have one, and follows a resolve', async () => {
      const page = await browser.newPage();
      const dialogs: string[] = [];
      page.on('dialog', (d) => {
        dialogs.push(d.message());
        void d.dismiss();
      });
      await page.goto(dashboard.url);
      const rows = page.locator('#alerts tbody tr');
      await waitFor(async () => (await rows.count()) === 3, 10_000, 'three alerts listed');
      const cells = await rows.evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)));
      expect(cells.map((c) => `${c[0]} ${c[2]} ${c[3]}`).sort()).toEqual([
        'firing EdgefleetDesiredFailed device=pi-001', 'firing EdgefleetTemperatureHigh device=pi-001', 'firing EdgefleetTemperatureHigh device=pi-002',
      ]);
      const desired = page.locator('#alerts tbody tr', { hasText: 'EdgefleetDesiredFailed' });
      expect(await desired.getAttribute('title')).toContain(HOSTILE);
      expect(await page.locator('#alerts img, #fleet img').count()).toBe(0);
      expect(await page.locator('#alerts-outbox').textContent()).toBe('Webhook notifications not delivered: hook: 3 waiting, 0 refused (ECONNREFUSED)');

      const mark = (device: string) => page.locator(`#fleet tbody tr[data-device="${device}"]`);
      const classOf = async (device: string): Promise<string> => (await mark(device).getAttribute('class')) ?? '';
      await waitFor(async () => (await classOf('pi-001')).includes('alerting-critical'), 10_000, 'pi-001 marked critical');
      expect(await mark('pi-001').locator('.alert-badge').textContent()).toBe('2');
      expect(await mark('pi-001').locator('.alert-badge').getAttribute('title')).toMatch(/^(EdgefleetDesiredFailed, EdgefleetTemperatureHigh|EdgefleetTemperatureHigh, EdgefleetDesiredFailed)$/);
      expect(await classOf('pi-002')).toBe('alerting');
      expect(await classOf('pi-003')).toBe('');
      expect(await mark('pi-003').locator('.alert-badge').count()).toBe(0);

      // pi-002 cools down: its alert resolves and the page drops the mark on the next poll.
      await store.insertPoints('pi-002', [hot(2, 40)]);
      await alerts.tick(Date.now());
      await waitFor(async () => (await classOf('pi-002')) === '', 12_000, 'pi-002 unmarked');
      expect(await mark('pi-002').locator('.alert-badge').count()).toBe(0);
      await waitFor(async () => (await rows.count()) === 2, 12_000, 'two alerts listed');
      expect(dialogs).toEqual([]);
      await page.close();
    }, 60_000);
  });
});
