/**
 * The alert evaluator on both stores (fleet/alerts/service.ts over
 * fleet/collector/alert-records.ts), with the clock the test gives each
 * tick: an alert pending or firing survives a collector restart without
 * firing again or being forgotten; one collector of several evaluates; a
 * webhook receiver that refuses connections, then answers 503, then comes
 * back gets every notification, in order, none twice; one that refuses a
 * message for good (400) does not get it again and the refusal stays
 * visible; the messages are Alertmanager's webhook JSON.
 */
import { describe, expect, it } from 'vitest';
import { createLogger } from '../agent/log.js';
import { DEFAULT_BACKOFF, NO_END, backoffMs } from '../fleet/alerts/notifier.js';
import { parseRules } from '../fleet/alerts/rules.js';
import { AlertService } from '../fleet/alerts/service.js';
import type { FleetStore } from '../fleet/collector/store.js';
import type { TelemetryPoint } from '../protocol/index.js';
import { formatTime } from '../protocol/index.js';
import { storeBackends } from './helpers/stores.js';
import { webhookReceiver } from './helpers/webhook-receiver.js';

const T0 = Date.parse('2026-12-04T10:00:00Z');
const MIN = 60_000;
const log = createLogger({ level: 'silent' });

/** A health point with the board at `tempC`. */
const board = (seq: number, at: number, tempC: number): TelemetryPoint => ({
  kind: 'health', seq, ts: formatTime(at), tempC, cpuPct: 5, load1: 0.2, memUsedBytes: 10, memTotalBytes: 20, diskFreeBytes: 5, rssBytes: 3, uptimeS: 9, gpus: [],
});

const rulesFor = (url: string, extra = '') =>
  parseRules(`
externalURL: http://fleet.example.com:8600
receivers:
  - name: hook
    url: ${url}
    headers: { Authorization: Bearer s3cret }
    timeout: 500ms
rules:
  - { alert: EdgefleetTemperatureHigh, for: 1m }
${extra}`);

const service = (store: FleetStore, url: string, holder = 'c1') =>
  new AlertService({ store, rules: rulesFor(url), log, holder, backoff: { baseMs: 1000, maxMs: 8000 } });

/** Runs `fn` on a store on the database `open` opens, initialised, closed after. */
async function withStore<T>(open: () => FleetStore, fn: (store: FleetStore) => Promise<T>): Promise<T> {
  const store = open();
  await store.init();
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const { backends } = storeBackends('alerts');

for (const backend of backends) {
  describe.skipIf(backend.skip)(`alerts on ${backend.name}`, () => {
    it('pending and firing alerts survive restarts: the for goes on, nothing fires twice, nothing is forgotten', async () => {
      const open = await backend.fresh();
      const url = 'http://127.0.0.1:9/never';
      await withStore(open, async (store) => {
        await store.insertPoints('pi-001', [board(1, T0, 91)], T0);
        await store.insertPoints('pi-002', [board(1, T0, 40)], T0);
        await service(store, url).tick(T0);
        expect((await store.alerts.active()).map((a) => `${a.state} ${a.labels.device}`)).toEqual(['pending pi-001']);
      });
      // Restarted 61 s later: the pending alert's minute is over, so it fires, once.
      await withStore(open, async (store) => {
        await service(store, url).tick(T0 + MIN + 1000);
        const [firing] = await store.alerts.active();
        expect(firing).toMatchObject({ state: 'firing', activeSince: T0, firedAt: T0 + MIN + 1000, labels: { device: 'pi-001' } });
        expect((await store.alerts.outbox()).map((o) => [o.receiver, o.waiting])).toEqual([['hook', 1]]);
      });
      await withStore(open, async (store) => {
        await service(store, url).tick(T0 + 2 * MIN);
        expect((await store.alerts.active()).map((a) => a.state)).toEqual(['firing']);
        expect((await store.alerts.outbox())[0]?.waiting).toBe(1);
        await store.insertPoints('pi-001', [board(2, T0 + 2 * MIN, 60)], T0 + 2 * MIN);
      });
      await withStore(open, async (store) => {
        await service(store, url).tick(T0 + 3 * MIN);
        expect(await store.alerts.active()).toEqual([]);
        expect((await store.alerts.resolved(10)).map((a) => [a.labels.device, a.resolvedAt])).toEqual([['pi-001', T0 + 3 * MIN]]);
        const due = await store.alerts.due('hook', T0 + 3 * MIN, 10);
        expect(due.map((e) => e.notification.status)).toEqual(['firing', 'resolved']);
      });
    });

    it('one collector of several on the store evaluates; another takes over when it stops', async () => {
      const open = await backend.fresh();
      const [a, b] = [open(), open()];
      await a.init();
      await b.init();
      try {
        await a.insertPoints('pi-001', [board(1, T0, 95)], T0);
        const first = service(a, 'http://127.0.0.1:9/x', 'collector-a');
        const second = service(b, 'http://127.0.0.1:9/x', 'collector-b');
        await first.tick(T0);
        await second.tick(T0);
        await first.tick(T0 + 2 * MIN);
        await second.tick(T0 + 2 * MIN);
        expect((await a.alerts.outbox())[0]?.waiting).toBe(1);
        await first.stop();
        await second.tick(T0 + 3 * MIN);
        await a.insertPoints('pi-001', [board(2, T0 + 3 * MIN, 20)], T0 + 3 * MIN);
        await second.tick(T0 + 4 * MIN);
        expect((await b.alerts.due('hook', T0 + 4 * MIN, 10)).map((e) => e.notification.status)).toEqual(['firing', 'resolved']);
      } finally {
        await a.close();
        await b.close();
      }
    });

    it('a receiver down, then answering 503, then up gets every notification once, in order, across a restart', async () => {
      const hook = await webhookReceiver();
      await hook.down();
      const open = await backend.fresh();
      let now = T0;
      const devices = ['pi-001', 'pi-002', 'pi-003'];
      await withStore(open, async (store) => {
        const svc = service(store, hook.url);
        for (const [i, d] of devices.entries()) await store.insertPoints(d, [board(1, now, 85 + i)], now);
        await svc.tick(now);
        now += MIN;
        await svc.tick(now);
        // Refused: nothing delivered, retried after the backoff.
        await svc.deliver(now);
        expect(hook.requests).toEqual([]);
        const [waiting] = await store.alerts.outbox();
        expect(waiting).toMatchObject({ receiver: 'hook', waiting: 3, failed: 0, lastError: 'ECONNREFUSED' });
        expect(await store.alerts.due('hook', now + 499, 10)).toEqual([]);
        // pi-001 cools down while the receiver is away: its resolving queues behind its firing.
        await store.insertPoints('pi-001', [board(2, now, 50)], now);
        now += MIN;
        await svc.tick(now);
        await hook.up();
        hook.answer = 503;
        await svc.deliver(now);
        expect(hook.requests.map((r) => r.answered)).toEqual([503]);
        const again = await store.alerts.due('hook', now + 10_000, 10);
        expect(again.map((e) => `${e.notification.status} ${e.notification.labels.device} ${e.attempts} ${e.lastError}`)).toEqual([
          'firing pi-001 2 HTTP 503 Service Unavailable', 'firing pi-002 2 HTTP 503 Service Unavailable', 'firing pi-003 2 HTTP 503 Service Unavailable',
          'resolved pi-001 0 null',
        ]);
        // Before the backoff ends nothing is sent.
        await svc.deliver(now + 1);
        expect(hook.requests).toHaveLength(1);
      });
      // The collector restarts; the receiver is back.
      hook.answer = 200;
      await withStore(open, async (store) => {
        const svc = service(store, hook.url);
        await svc.tick(now + 10_000);
        await svc.deliver(now + 10_000);
        expect(await store.alerts.outbox()).toEqual([]);
        expect(svc.delivered).toBe(4);
      });
      const taken = hook.taken();
      expect(taken.flatMap((m) => m.alerts.map((a) => `${a.status} ${a.labels.device}`))).toEqual([
        'firing pi-001', 'firing pi-002', 'firing pi-003', 'resolved pi-001',
      ]);
      // Alertmanager's webhook JSON, version 4; the receiver's headers sent.
      const [firing, resolved] = taken;
      expect(Object.keys(firing ?? {}).sort()).toEqual(
        ['alerts', 'commonAnnotations', 'commonLabels', 'externalURL', 'groupKey', 'groupLabels', 'receiver', 'status', 'truncatedAlerts', 'version'],
      );
      expect(firing).toMatchObject({
        version: '4', groupKey: '{}:{alertname="EdgefleetTemperatureHigh"}', truncatedAlerts: 0, status: 'firing', receiver: 'hook',
        groupLabels: { alertname: 'EdgefleetTemperatureHigh' }, commonLabels: { alertname: 'EdgefleetTemperatureHigh', severity: 'warning' },
        commonAnnotations: {}, externalURL: 'http://fleet.example.com:8600',
      });
      expect(firing?.alerts[0]).toEqual({
        status: 'firing',
        labels: { alertname: 'EdgefleetTemperatureHigh', severity: 'warning', device: 'pi-001' },
        annotations: { summary: 'pi-001: board at 85 C', description: `pi-001 reported a board temperature of 85 C at ${formatTime(T0)}; the rule fires above 80 C.` },
        startsAt: formatTime(T0 + MIN), endsAt: NO_END, generatorURL: 'http://fleet.example.com:8600/#alerts', fingerprint: expect.stringMatching(/^[0-9a-f]{16}$/),
      });
      expect(resolved).toMatchObject({ status: 'resolved', commonLabels: { device: 'pi-001' }, alerts: [{ status: 'resolved', startsAt: formatTime(T0 + MIN), endsAt: formatTime(T0 + 2 * MIN) }] });
      expect(resolved?.alerts[0]?.fingerprint).toBe(firing?.alerts[0]?.fingerprint);
      expect(hook.requests[0]?.headers).toMatchObject({ authorization: 'Bearer s3cret', 'content-type': 'application/json' });
      await hook.down();
    });

    it('a 400 is refused for good and kept visible; 408, 429 and a receiver that does not answer are retried', async () => {
      const hook = await webhookReceiver('hang');
      const open = await backend.fresh();
      await withStore(open, async (store) => {
        const svc = service(store, hook.url);
        await store.insertPoints('pi-001', [board(1, T0, 99)], T0);
        await svc.tick(T0);
        await svc.tick(T0 + MIN);
        await svc.deliver(T0 + MIN);
        expect((await store.alerts.outbox())[0]).toMatchObject({ waiting: 1, lastError: 'no answer within 500 ms' });
        for (const [i, status] of [408, 429].entries()) {
          hook.answer = status;
          await svc.deliver(T0 + (60 + 30 * i) * MIN);
          expect((await store.alerts.outbox())[0]).toMatchObject({ waiting: 1, failed: 0 });
        }
        hook.answer = 400;
        await svc.deliver(T0 + 120 * MIN);
        expect(await store.alerts.outbox()).toEqual([{ receiver: 'hook', waiting: 0, failed: 1, oldestAt: T0 + MIN, lastError: 'HTTP 400 Bad Request' }]);
        await svc.deliver(T0 + 240 * MIN);
        expect(hook.requests.map((r) => r.answered)).toEqual(['hang', 408, 429, 400]);
      });
      await hook.down();
    });
  });
}

describe('backoff', () => {
  it('doubles from the base up to the cap, with up to half of it random', () => {
    const b = { baseMs: 1000, maxMs: 8000 };
    expect([1, 2, 3, 4, 5, 30].map((n) => backoffMs(n, b, () => 1))).toEqual([1000, 2000, 4000, 8000, 8000, 8000]);
    expect([1, 2, 3, 4].map((n) => backoffMs(n, b, () => 0))).toEqual([500, 1000, 2000, 4000]);
    expect(backoffMs(1000, DEFAULT_BACKOFF, () => 1)).toBe(300_000);
  });
});
