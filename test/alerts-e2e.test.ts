/**
 * The built-in evaluator end to end: a real `edgefleet collect --alerts
 * FILE` (a child process) on a real Mosquitto, fed a device's telemetry and
 * status as an agent sends them, fires to a webhook receiver in this test
 * and resolves there; `edgefleet alerts` (text and --json) reads the same
 * alerts from the store while the collector runs.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AlertsReport } from '../fleet/alerts/view.js';
import { DEFAULT_TOPIC_ROOT, formatTime, telemetryBatchSchema, topics } from '../protocol/index.js';
import { waitFor } from './helpers/agent.js';
import { REPO, runEdgefleet } from './helpers/child.js';
import { connectFleet } from './helpers/fleet.js';
import { mosquittoSkipReason, startMosquitto, type Mosquitto } from './helpers/mosquitto.js';
import { webhookReceiver, type WebhookReceiver } from './helpers/webhook-receiver.js';

let seq = 0;

/** One telemetry batch: an inference interval with `errors` of 200 requests, and the board at `tempC`. */
function batch(device: string, tempC: number, errors: number): Buffer {
  const ts = formatTime(Date.now());
  const points = [
    { seq: ++seq, ts, kind: 'inference', model: 'mnist', version: 3, intervalS: 10, count: 200, errors, latencyMs: { p50: 1, p90: 2, p99: 3, max: 4, mean: 1.2 } },
    { seq: ++seq, ts, kind: 'health', cpuPct: 20, load1: 0.3, memUsedBytes: 1e8, memTotalBytes: 1e9, tempC, diskFreeBytes: 1e9, rssBytes: 5e7, uptimeS: 60, gpus: [] },
  ];
  return Buffer.from(JSON.stringify(telemetryBatchSchema.parse({ schema: 1, device, points })));
}

describe.skipIf(mosquittoSkipReason())('edgefleet collect --alerts, end to end', () => {
  let dir: string;
  let broker: Mosquitto;
  let hook: WebhookReceiver;
  let device: MqttClient;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-alerts-e2e-'));
    broker = await startMosquitto();
    hook = await webhookReceiver();
    device = await connectFleet(broker.url);
  }, 30_000);
  afterAll(async () => {
    await device?.endAsync();
    await hook?.down();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('fires and resolves to the webhook; edgefleet alerts lists them', async () => {
    const rules = join(dir, 'rules.yaml');
    await writeFile(rules, `
receivers:
  - name: test-hook
    url: ${hook.url}
    headers: { Authorization: Bearer e2e }
rules:
  - { alert: EdgefleetTemperatureHigh, for: 0 }
  - { alert: EdgefleetErrorRateHigh, threshold: 2, for: 2s }
  - { alert: EdgefleetDeviceOffline, for: 10s }
`);
    const db = `sqlite:${join(dir, 'collector.db')}`;
    const child = spawn(process.execPath, ['--import', 'tsx', 'fleet/bin.ts', 'collect', '--broker', broker.url, '--db', db, '--alerts', rules,
      '--alerts-every', '1s', '--client-id', 'alerts-e2e', '--session-expiry', '0'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    const closed = new Promise((resolve) => child.once('close', resolve));
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const fired = (alertname: string, status: string): boolean =>
      hook.taken().some((m) => m.alerts.some((a) => a.labels.alertname === alertname && a.status === status));
    try {
      await waitFor(() => output.includes('collector started') && output.includes('alert evaluator started'), 20_000, 'the collector to start')
        .catch((err: unknown) => Promise.reject(new Error(`${String(err)}:\n${output}`)));
      const topic = (channel: 'status' | 'telemetry'): string => topics.device(DEFAULT_TOPIC_ROOT, 'pi-001', channel);
      await device.publishAsync(topic('status'), JSON.stringify({ online: true, ts: formatTime(Date.now()) }), { qos: 1, retain: true });
      await device.publishAsync(topic('telemetry'), batch('pi-001', 86.5, 10), { qos: 1 });

      await waitFor(() => fired('EdgefleetTemperatureHigh', 'firing'), 15_000, `the temperature alert at the webhook:\n${output}`);
      await waitFor(() => fired('EdgefleetErrorRateHigh', 'firing'), 15_000, 'the error-rate alert after its 2 s');
      const [first] = hook.taken();
      expect(first).toMatchObject({ version: '4', receiver: 'test-hook', status: 'firing', alerts: [{ labels: { device: 'pi-001' }, annotations: { summary: 'pi-001: board at 86.5 C' } }] });
      expect(hook.requests[0]?.headers.authorization).toBe('Bearer e2e');

      const json = await runEdgefleet(['alerts', '--db', db, '--json']);
      expect(json.code).toBe(0);
      const report = JSON.parse(json.stdout) as AlertsReport;
      expect(report.active.map((a) => `${a.state} ${a.alertname} ${a.labels.device}`).sort()).toEqual([
        'firing EdgefleetErrorRateHigh pi-001', 'firing EdgefleetTemperatureHigh pi-001',
      ]);
      expect(report.active.find((a) => a.alertname === 'EdgefleetErrorRateHigh')?.summary).toBe('pi-001 mnist v3: 5 % errors over the last interval');
      expect(report.outbox).toEqual([]);

      // The board cools and the errors stop: both resolve. Then the device goes offline.
      await device.publishAsync(topic('telemetry'), batch('pi-001', 60, 0), { qos: 1 });
      await waitFor(() => fired('EdgefleetTemperatureHigh', 'resolved') && fired('EdgefleetErrorRateHigh', 'resolved'), 15_000, 'both to resolve');
      await device.publishAsync(topic('status'), JSON.stringify({ online: false, ts: formatTime(Date.now()) }), { qos: 1, retain: true });
      await waitFor(() => fired('EdgefleetDeviceOffline', 'firing'), 25_000, 'the offline alert, 10 s after the offline status');

      const text = await runEdgefleet(['alerts', '--db', db]);
      expect(text.code).toBe(0);
      const lines = text.stdout.split('\n');
      expect(lines[0]).toMatch(/^STATE\s+SEVERITY\s+ALERT\s+SUBJECT\s+SINCE\s+SUMMARY$/);
      expect(lines[1]).toMatch(/^firing\s+critical\s+EdgefleetDeviceOffline\s+device=pi-001\s+\d+ s ago\s+pi-001 offline since /);
      expect(lines).toContain('recently resolved:');
      expect(lines.filter((l) => /^\d+ s ago\s+warning\s+Edgefleet(TemperatureHigh|ErrorRateHigh)\s+device=pi-001/.test(l))).toHaveLength(2);
      // Each change was told once: two firings and two resolvings and one offline, no repeats.
      const told = hook.taken().flatMap((m) => m.alerts.map((a) => `${a.status} ${a.labels.alertname}`));
      expect(told.sort()).toEqual([
        'firing EdgefleetDeviceOffline', 'firing EdgefleetErrorRateHigh', 'firing EdgefleetTemperatureHigh', 'resolved EdgefleetErrorRateHigh', 'resolved EdgefleetTemperatureHigh',
      ]);
    } finally {
      child.kill('SIGTERM');
      await closed;
    }
    expect(output).not.toContain('Bearer e2e');
  }, 90_000);

  it('edgefleet alerts: a missing database and unknown options are clear errors', async () => {
    const missing = await runEdgefleet(['alerts', '--db', `sqlite:${join(dir, 'none.db')}`]);
    expect(missing.code).toBe(1);
    expect(missing.stderr.trim()).toBe(`edgefleet alerts: no collector database at ${join(dir, 'none.db')}: start 'edgefleet collect' first or pass --db`);
    const unknown = await runEdgefleet(['alerts', '--since', '1h']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/Unknown option '--since'/);
    const badRules = join(dir, 'bad.yaml');
    await writeFile(badRules, 'rules:\n  - alert: EdgefleetGpuBusy\n    for: soon\n');
    const collect = await runEdgefleet(['collect', '--broker', broker.url, '--db', `sqlite:${join(dir, 'c2.db')}`, '--alerts', badRules]);
    expect(collect.code).toBe(1);
    expect(collect.stderr).toContain(`alert rules ${badRules} are invalid:`);
    expect(collect.stderr).toContain('rules[0].for: "soon" is not a duration such as 30s, 5m, 1h');
    const noRules = await runEdgefleet(['collect', '--broker', broker.url, '--alerts-every', '5s']);
    expect(noRules.code).toBe(2);
    expect(noRules.stderr.trim()).toBe("edgefleet collect: --alerts-every needs --alerts FILE (see 'edgefleet collect --help')");
  }, 60_000);
});
