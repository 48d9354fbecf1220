/**
 * The collector's fleet metrics (fleet/collector/fleet-metrics.ts): the page
 * built from what each store holds, checked by Debian's `promtool check
 * metrics`; label values escaped whatever they hold; series per device
 * bounded by the quotas; the shipped rules pass `promtool check rules` and
 * their unit tests; and `edgefleet collect --metrics` serves /metrics alone.
 */
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collector, type CollectorStats } from '../fleet/collector/collector.js';
import { MAX_GPUS, MAX_GROUPS, MetricsText, escapeLabelValue, fleetMetricsSource, renderFleetMetrics } from '../fleet/collector/fleet-metrics.js';
import { PAUSED_BY_OPERATOR, type Rollout } from '../fleet/rollout/planner.js';
import { DashboardServer } from '../fleet/collector/http-server.js';
import type { FleetRow } from '../fleet/collector/store.js';
import { DEVICE_ID_RE, formatTime, healthPointSchema, inferencePointSchema, reportedStateSchema } from '../protocol/index.js';
import { waitFor } from './helpers/agent.js';
import { REPO, freePort, runEdgefleet } from './helpers/child.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { prometheusSkipReason, promtool } from './helpers/prometheus.js';
import { rolloutRecord } from './helpers/rollout-record.js';
import { storeBackends } from './helpers/stores.js';

const NOW = Date.parse('2026-03-01T12:00:00.000Z');
const at = (ms: number): string => formatTime(ms);
const promSkip = prometheusSkipReason();
const stores = storeBackends('metrics');
const silent = pino({ level: 'silent' });

/** The sample lines of `text` whose metric name is `name` (no HELP or TYPE). */
const samples = (text: string, name: string): string[] => text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));

function row(device: string, extra: Partial<FleetRow> = {}): FleetRow {
  return {
    device, online: true, groups: [], desired: null, models: [], agent: null, trust: null, inference: [], health: null,
    lastSeen: at(NOW - 5_000), dropped: { count: 0, lastAt: null }, outbox: null, quarantined: 0, overQuota: 0, clockSkewed: 0, ...extra,
  };
}

const stats = (): CollectorStats => ({
  batches: 7, points: 20, duplicates: 1, events: 2, statuses: 3, states: 3, rejected: 1, quarantined: 1, overQuota: 4, clockSkewed: 0,
  normalised: 0, acks: 6, subscribes: 1, received: { telemetry: 9, events: 2, status: 3, state: 3 }, ingestLagMs: 250,
});

describe.skipIf(promSkip !== false)('promtool on the shipped rules (provisioning/prometheus)', () => {
  const dir = join(REPO, 'provisioning', 'prometheus');
  it('promtool check rules and check config pass', async () => {
    const rules = await promtool(['check', 'rules', join(dir, 'edgefleet-rules.yml')]);
    expect(rules.output).toContain('SUCCESS: 8 rules found');
    expect(rules.output).not.toMatch(/FAILED|lint/i);
    expect(rules.code).toBe(0);
    const config = await promtool(['check', 'config', join(dir, 'prometheus.yml')]);
    expect(config.code, config.output).toBe(0);
  });

  it('promtool test rules passes the rules\' unit tests (every alert of the contract, firing and quiet)', async () => {
    const run = await promtool(['test', 'rules', join(dir, 'edgefleet-rules.test.yml')]);
    expect(run.output).toContain('SUCCESS');
    expect(run.code, run.output).toBe(0);
  });
});

describe('the exposition format', () => {
  it('escapes backslash, double quote and line feed in label values, and keeps other text as it is', () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    expect(escapeLabelValue('pi-ü-設備\t')).toBe('pi-ü-設備\t');
  });

  it('refuses a metric or label name Prometheus could not read, and a family declared twice', () => {
    const text = new MetricsText();
    expect(() => text.family('edgefleet-bad', 'gauge', 'x')).toThrow(/"edgefleet-bad" is not a Prometheus metric name/);
    const ok = text.family('edgefleet_ok', 'gauge', 'x');
    expect(() => ok({ 'bad-label': 'v' }, 1)).toThrow(/"bad-label" is not a Prometheus label name/);
    expect(() => ok({ __name__: 'v' }, 1)).toThrow(/"__name__" is not a Prometheus label name/);
    expect(() => text.family('edgefleet_ok', 'gauge', 'y')).toThrow(/edgefleet_ok declared twice/);
  });

  it('writes special values as Prometheus spells them', () => {
    const text = new MetricsText();
    const g = text.family('edgefleet_x', 'gauge', 'help with a \\ and a\nline feed');
    g({ k: 'nan' }, NaN);
    g({ k: 'inf' }, Infinity);
    g({ k: 'minus' }, -Infinity);
    expect(text.toString()).toBe(
      '# HELP edgefleet_x help with a \\\\ and a\\nline feed\n# TYPE edgefleet_x gauge\nedgefleet_x{k="nan"} NaN\nedgefleet_x{k="inf"} +Inf\nedgefleet_x{k="minus"} -Inf\n',
    );
  });

  it.skipIf(promSkip !== false)('hostile text in labels stays inside its label: promtool reads the page, one sample per series', async () => {
    // The protocol's device-id rule refuses all of these; the agent's version and arch are free text from the device.
    const hostile = ['pi-"quoted"', 'pi-\\back\\slash', 'pi-new\nline edgefleet_device_online{device="forged"} 1', 'pi-ünïcødé-設備', 'pi-}{,='];
    for (const id of hostile) expect(DEVICE_ID_RE.test(id)).toBe(false);
    const rows = hostile.map((id) => row(id, { agent: { version: `1.0\n# TYPE x counter\n"}`, arch: 'arm64\\' } }));
    const page = renderFleetMetrics({ rows, rollouts: [], now: NOW });
    const check = await promtool(['check', 'metrics'], page);
    expect(check.output).toBe('');
    expect(check.code).toBe(0);
    const online = samples(page, 'edgefleet_device_online');
    expect(online).toEqual([
      'edgefleet_device_online{device="pi-\\"quoted\\""} 1',
      'edgefleet_device_online{device="pi-\\\\back\\\\slash"} 1',
      'edgefleet_device_online{device="pi-new\\nline edgefleet_device_online{device=\\"forged\\"} 1"} 1',
      'edgefleet_device_online{device="pi-ünïcødé-設備"} 1',
      'edgefleet_device_online{device="pi-}{,="} 1',
    ]);
    expect(page).not.toContain('device="forged"} 1\n');
    expect(samples(page, 'edgefleet_device_agent_info')[0]).toBe('edgefleet_device_agent_info{device="pi-\\"quoted\\"",version="1.0\\n# TYPE x counter\\n\\"}",arch="arm64\\\\"} 1');
  });
});

describe('series per device stay within the quotas', () => {
  const inference = (model: string, version: number) => ({ model, version, ts: at(NOW - 10_000), intervalS: 10, count: 100, errors: 2, p50: 1, p99: 4 });
  const gpu = { name: 'Orin', utilPct: 50, memUsedBytes: 1, memTotalBytes: 2, tempC: 40 };
  const health = (gpus: number) => ({ ts: at(NOW), cpuPct: 50, load1: 1, tempC: 50, memUsedBytes: 1, memTotalBytes: 2, gpus: Array.from({ length: gpus }, () => gpu) });

  it('one series per model slot up to maxModels, MAX_GPUS GPUs and MAX_GROUPS groups, whatever the device lists', () => {
    const models = Array.from({ length: 10 }, (_, i) => inference(`m${i}`, 1));
    const groups = Array.from({ length: 40 }, (_, i) => `g${i}`);
    const page = renderFleetMetrics({ rows: [row('pi-1', { inference: models, groups, health: health(50) })], rollouts: [], maxModels: 3, now: NOW });
    expect(samples(page, 'edgefleet_model_requests')).toHaveLength(3);
    expect(samples(page, 'edgefleet_model_latency_p99_seconds')).toHaveLength(3);
    expect(samples(page, 'edgefleet_device_gpu_utilization_ratio')).toHaveLength(MAX_GPUS);
    expect(samples(page, 'edgefleet_device_group')).toHaveLength(MAX_GROUPS);
  });

  it('a new version replaces the old one\'s series: the count per device does not grow as versions come and go', () => {
    const counts = [1, 2, 3, 4].map((version) => {
      const page = renderFleetMetrics({ rows: [row('pi-1', { inference: [inference('mnist', version)] })], rollouts: [], now: NOW });
      return page.split('\n').filter((l) => l.startsWith('edgefleet_')).length;
    });
    expect(new Set(counts).size).toBe(1);
  });
});

describe('edgefleet_rollout_halted', () => {
  // The reasons are the planner's: a gate writes why, an operator's pause writes PAUSED_BY_OPERATOR.
  const rollout = (id: string, group: string, status: Rollout['status'], reason: string | null): Rollout => ({
    ...rolloutRecord(id, group, [['mnist', 2], ['kws', 5]], ['a', 'b'], {}, NOW), status, reason,
  });

  it('1 for a rollout the controller paused on a gate or failed, 0 for one an operator paused; old rollouts of a group drop out', () => {
    const rollouts = [
      rollout('gate-paused', 'lab', 'paused', 'wave 1: error rate 4.0 % above 1 %'),
      rollout('operator-paused', 'field', 'paused', PAUSED_BY_OPERATOR),
      rollout('failed', 'east', 'failed', 'wave 1: 0 of 2 devices applied within 60 s'),
      rollout('older-failed', 'east', 'failed', 'wave 1: 0 of 2 devices applied within 60 s'),
      rollout('done', 'west', 'succeeded', null),
    ];
    const page = renderFleetMetrics({ rows: [], rollouts, now: NOW });
    expect(samples(page, 'edgefleet_rollout_halted')).toEqual([
      'edgefleet_rollout_halted{rollout="gate-paused",model="mnist"} 1',
      'edgefleet_rollout_halted{rollout="gate-paused",model="kws"} 1',
      'edgefleet_rollout_halted{rollout="operator-paused",model="mnist"} 0',
      'edgefleet_rollout_halted{rollout="operator-paused",model="kws"} 0',
      'edgefleet_rollout_halted{rollout="failed",model="mnist"} 1',
      'edgefleet_rollout_halted{rollout="failed",model="kws"} 1',
      'edgefleet_rollout_halted{rollout="done",model="mnist"} 0',
      'edgefleet_rollout_halted{rollout="done",model="kws"} 0',
    ]);
    expect(samples(page, 'edgefleet_rollout_active')).toEqual([
      'edgefleet_rollout_active{rollout="gate-paused"} 1',
      'edgefleet_rollout_active{rollout="operator-paused"} 1',
      'edgefleet_rollout_active{rollout="failed"} 0',
      'edgefleet_rollout_active{rollout="done"} 0',
    ]);
  });
});

for (const backend of stores.backends) {
  describe.skipIf(backend.skip !== false)(`metrics from the ${backend.name} store${backend.skip ? ` (skipped: ${backend.skip})` : ''}`, () => {
    it('every figure of the issue, under the names docs/monitoring.md lists; promtool check metrics passes', async () => {
      const store = await backend.open();
      await store.init();
      try {
        await store.upsertStatus('pi-1', { online: true, ts: at(NOW) }, NOW);
        await store.upsertStatus('pi-2', { online: false }, NOW - 60_000);
        await store.upsertState(reportedStateSchema.parse({
          schema: 1, device: 'pi-1', groups: ['lab', 'east'], ts: at(NOW),
          desired: { source: 'device', serial: 7, status: 'rejected', error: 'bad signature' }, models: [],
          agent: { version: '0.1.0', arch: 'arm64', startedAt: at(NOW - 60_000), executionProviders: { available: ['cpu'], unavailable: {} } },
        }), NOW);
        await store.insertPoints('pi-1', [
          inferencePointSchema.parse({
            seq: 1, ts: at(NOW - 2_000), kind: 'inference', model: 'mnist', version: 3, intervalS: 10, count: 1000, errors: 42,
            latencyMs: { p50: 1.5, p90: 3, p99: 620, max: 900, mean: 2 },
          }),
          healthPointSchema.parse({
            seq: 2, ts: at(NOW - 2_000), kind: 'health', cpuPct: 37.5, load1: 0.7, memUsedBytes: 2e9, memTotalBytes: 8e9, tempC: 83.5,
            diskFreeBytes: 1e9, rssBytes: 5e7, uptimeS: 60, gpus: [{ name: 'Orin', utilPct: 95, memUsedBytes: 3e9, memTotalBytes: 8e9, tempC: 61 }],
            outboxRows: 12, outboxBytes: 4096,
          }),
          { seq: 3, ts: at(NOW - 1_000), kind: 'dropped', count: 1200, oldestSeq: 10, newestSeq: 1209, reason: 'buffer full' } as never,
        ], NOW);
        await store.addCounts(new Map([['pi-1', { quarantined: 2, overQuota: 5, clockSkewed: 1 }]]));
        const page = await fleetMetricsSource(store, { collector: stats() })();
        const check = await promtool(['check', 'metrics'], page);
        if (promSkip === false) expect(check.output, page).toBe('');
        const value = (series: string): string | undefined => page.split('\n').find((l) => l.startsWith(`${series} `))?.slice(series.length + 1);
        const ago = (s: string): number => Number(s);
        expect(value('edgefleet_device_online{device="pi-1"}')).toBe('1');
        expect(value('edgefleet_device_online{device="pi-2"}')).toBe('0');
        expect(ago(value('edgefleet_device_last_seen_age_seconds{device="pi-2"}') ?? 'NaN')).toBeGreaterThan(60);
        expect(value('edgefleet_device_group{device="pi-1",group="lab"}')).toBe('1');
        expect(value('edgefleet_device_group{device="pi-1",group="east"}')).toBe('1');
        expect(value('edgefleet_device_agent_info{device="pi-1",version="0.1.0",arch="arm64"}')).toBe('1');
        expect(samples(page, 'edgefleet_device_desired_status')).toEqual([
          'edgefleet_device_desired_status{device="pi-1",status="applying"} 0',
          'edgefleet_device_desired_status{device="pi-1",status="applied"} 0',
          'edgefleet_device_desired_status{device="pi-1",status="failed"} 0',
          'edgefleet_device_desired_status{device="pi-1",status="rejected"} 1',
        ]);
        expect(value('edgefleet_device_cpu_usage_ratio{device="pi-1"}')).toBe('0.375');
        expect(value('edgefleet_device_load1{device="pi-1"}')).toBe('0.7');
        expect(value('edgefleet_device_memory_used_bytes{device="pi-1"}')).toBe('2000000000');
        expect(value('edgefleet_device_memory_total_bytes{device="pi-1"}')).toBe('8000000000');
        expect(value('edgefleet_device_temperature_celsius{device="pi-1"}')).toBe('83.5');
        expect(value('edgefleet_device_gpu_utilization_ratio{device="pi-1",gpu="0"}')).toBe('0.95');
        expect(value('edgefleet_device_gpu_memory_used_bytes{device="pi-1",gpu="0"}')).toBe('3000000000');
        expect(value('edgefleet_device_gpu_memory_total_bytes{device="pi-1",gpu="0"}')).toBe('8000000000');
        expect(value('edgefleet_device_gpu_temperature_celsius{device="pi-1",gpu="0"}')).toBe('61');
        expect(value('edgefleet_device_outbox_rows{device="pi-1"}')).toBe('12');
        expect(value('edgefleet_device_outbox_bytes{device="pi-1"}')).toBe('4096');
        expect(value('edgefleet_device_dropped_points_total{device="pi-1"}')).toBe('1200');
        expect(value('edgefleet_device_last_dropped_timestamp_seconds{device="pi-1"}')).toBe(String(NOW / 1000));
        expect(value('edgefleet_device_quarantined_messages_total{device="pi-1"}')).toBe('2');
        expect(value('edgefleet_device_over_quota_total{device="pi-1"}')).toBe('5');
        expect(value('edgefleet_device_clock_skewed_total{device="pi-1"}')).toBe('1');
        const model = '{device="pi-1",model="mnist",version="3"}';
        expect(value(`edgefleet_model_requests${model}`)).toBe('1000');
        expect(value(`edgefleet_model_errors${model}`)).toBe('42');
        expect(value(`edgefleet_model_interval_seconds${model}`)).toBe('10');
        expect(value(`edgefleet_model_latency_p50_seconds${model}`)).toBe('0.0015');
        expect(value(`edgefleet_model_latency_p99_seconds${model}`)).toBe('0.62');
        expect(ago(value(`edgefleet_model_interval_age_seconds${model}`) ?? 'NaN')).toBeGreaterThanOrEqual(2);
        expect(value('edgefleet_collector_messages_total{channel="telemetry"}')).toBe('9');
        expect(value('edgefleet_collector_batches_stored_total')).toBe('7');
        expect(value('edgefleet_collector_messages_quarantined_total')).toBe('1');
        expect(value('edgefleet_collector_ingest_lag_seconds')).toBe('0.25');
        expect(value('edgefleet_collector_devices')).toBe('2');
        // pi-2 said only its status: no health, model or desired series made up for it.
        expect(page).not.toMatch(/edgefleet_(model_\w+|device_(cpu|temperature|desired)\w*)\{device="pi-2"/);
      } finally {
        await store.close();
      }
    });
  });
}

describe.skipIf(mosquittoSkipReason() !== false)('/metrics over HTTP', () => {
  let broker: Mosquitto;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => broker?.stop());

  /** GET with the Host header given (Prometheus sends the target's address). */
  const get = (port: number, path: string, host: string): Promise<{ status: number; type: string; body: string }> =>
    new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, setHost: false, headers: { host } }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
      });
      req.once('error', reject);
      req.end();
    });

  it('the dashboard server serves /metrics beside its API, to a scrape by IP and port', async () => {
    const store = await stores.backends[0]!.open();
    await store.init();
    await store.upsertStatus('pi-1', { online: true }, Date.now());
    const collector = new Collector({ broker: { url: broker.url, topicRoot: 'edgefleet', tls: {} }, store, clientId: 'metrics-http', shareGroup: 'metrics-http', sessionExpiryS: 0, retentionMs: null, log: silent });
    const server = new DashboardServer({ store, listen: { host: '127.0.0.1', port: 0 }, log: silent, metrics: fleetMetricsSource(store, { collector: collector.stats }) });
    await server.start();
    try {
      const port = Number(new URL(server.url).port);
      const page = await get(port, '/metrics', `127.0.0.1:${port}`);
      expect(page.status).toBe(200);
      expect(page.type).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(page.body).toContain('edgefleet_device_online{device="pi-1"} 1\n');
      expect(page.body).toContain('edgefleet_collector_messages_total{channel="telemetry"} 0\n');
      expect((await get(port, '/api/devices?limit=1', `127.0.0.1:${port}`)).status).toBe(200);
      // A name the collector was not told (DNS rebinding) is refused, /metrics included.
      expect((await get(port, '/metrics', `evil.example:${port}`)).status).toBe(421);
    } finally {
      await server.stop();
      await store.close();
    }
  });

  it('a device sending under more model names than --max-models gets series for the first ones only, batch after batch', async () => {
    const store = await stores.backends[0]!.open();
    await store.init();
    const collector = new Collector({
      broker: { url: broker.url, topicRoot: 'edgefleet', tls: {} }, store, clientId: 'metrics-quota', shareGroup: 'metrics-quota',
      sessionExpiryS: 0, retentionMs: null, log: silent, quotas: { maxModels: 2 },
    });
    await collector.start();
    const pi = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    try {
      // The renderer's own cap stays at its default (64): the bound here is the collector's quota at ingest.
      const scrape = fleetMetricsSource(store, { collector: collector.stats });
      const counts: number[] = [];
      let seq = 0;
      for (let batch = 0; batch < 3; batch++) {
        // Each batch names five new models beside the first two.
        const models = ['a', 'b', ...Array.from({ length: 5 }, (_, k) => `extra-${batch}-${k}`)];
        const points = models.map((model) => inferencePointSchema.parse({
          seq: ++seq, ts: at(Date.now()), kind: 'inference', model, version: 1 + batch, intervalS: 10, count: 10, errors: 0, latencyMs: null,
        }));
        await pi.publishAsync('edgefleet/devices/pi-greedy/telemetry', JSON.stringify({ schema: 1, device: 'pi-greedy', points }), { qos: 1 });
        await waitFor(() => collector.stats.batches === batch + 1, 10_000, `batch ${batch + 1} stored`);
        const page = await scrape();
        counts.push(samples(page, 'edgefleet_model_requests').length);
        expect(samples(page, 'edgefleet_model_requests')).toEqual([
          `edgefleet_model_requests{device="pi-greedy",model="a",version="${1 + batch}"} 10`,
          `edgefleet_model_requests{device="pi-greedy",model="b",version="${1 + batch}"} 10`,
        ]);
      }
      expect(counts).toEqual([2, 2, 2]);
      expect(collector.stats.overQuota).toBe(15);
    } finally {
      await pi.endAsync();
      await collector.stop();
      await store.close();
    }
  });

  it('edgefleet collect --metrics serves /metrics alone: 404 for the dashboard and its API', async () => {
    const port = await freePort();
    const db = `sqlite:${join(stores.dir(), 'collect-metrics.db')}`;
    const child = spawn(process.execPath, ['--import', 'tsx', 'fleet/bin.ts', 'collect', '--broker', broker.url, '--db', db,
      '--metrics', `127.0.0.1:${port}`, '--client-id', 'metrics-listener', '--session-expiry', '0', '--log-level', 'warn'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    try {
      const until = Date.now() + 20_000;
      let page = await get(port, '/metrics', `127.0.0.1:${port}`).catch(() => undefined);
      while (page === undefined) {
        if (Date.now() > until || child.exitCode !== null) throw new Error(`edgefleet collect did not serve /metrics:\n${output}`);
        await new Promise((r) => setTimeout(r, 100));
        page = await get(port, '/metrics', `127.0.0.1:${port}`).catch(() => undefined);
      }
      expect(page.status).toBe(200);
      expect(page.body).toContain('# TYPE edgefleet_collector_messages_total counter\n');
      if (promSkip === false) expect((await promtool(['check', 'metrics'], page.body)).output).toBe('');
      const dashboard = await get(port, '/', `127.0.0.1:${port}`);
      expect(dashboard.status).toBe(404);
      expect(JSON.parse(dashboard.body)).toEqual({ error: 'this listener serves only /metrics, not /' });
      expect((await get(port, '/api/devices', `localhost:${port}`)).status).toBe(404);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
    }
  });

  it('a bad --metrics address is a usage error that says what was wrong', async () => {
    const run = await runEdgefleet(['collect', '--broker', broker.url, '--metrics', 'nowhere']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--metrics must be host:port such as 127.0.0.1:8600, got "nowhere"');
  });
});
