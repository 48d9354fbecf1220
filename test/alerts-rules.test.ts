/**
 * The alert rules file (fleet/alerts/rules.ts): the shipped default gives
 * the eight alerts of the shared contract with their defaults; scopes and
 * edited thresholds come through; every kind of bad input is refused with
 * its path and what was wrong, all problems at once.
 */
import { describe, expect, it } from 'vitest';
import { ALERT_DEFAULTS, ALERT_NAMES, loadRules, parseDuration, parseRules } from '../fleet/alerts/rules.js';

const SHIPPED = 'provisioning/alerts/edgefleet-alerts.yaml';

/** The problems listed in the error `text` gives, one per line after the first. */
function problems(text: string): string[] {
  try {
    parseRules(text, 'rules.yaml');
  } catch (err) {
    const lines = (err as Error).message.split('\n');
    expect(lines[0]).toBe('rules.yaml are invalid:');
    return lines.slice(1).map((l) => l.trim());
  }
  throw new Error('the rules were accepted');
}

describe('alert rules', () => {
  it('the shipped file lists the eight alerts with the contract defaults', async () => {
    const rules = await loadRules(SHIPPED);
    expect(rules.rules.map((r) => r.alert)).toEqual([...ALERT_NAMES]);
    const byName = new Map(rules.rules.map((r) => [r.alert, r]));
    expect(byName.get('EdgefleetErrorRateHigh')).toMatchObject({ threshold: 1, forMs: 300_000, severity: 'warning', group: null, model: null });
    expect(byName.get('EdgefleetLatencyP99High')).toMatchObject({ threshold: 500, forMs: 300_000 });
    expect(byName.get('EdgefleetGpuBusy')).toMatchObject({ threshold: 90, forMs: 300_000 });
    expect(byName.get('EdgefleetDeviceOffline')).toMatchObject({ threshold: null, forMs: 300_000, severity: 'critical' });
    expect(byName.get('EdgefleetTemperatureHigh')).toMatchObject({ threshold: 80, forMs: 300_000 });
    expect(byName.get('EdgefleetTelemetryDropped')).toMatchObject({ windowMs: 900_000, forMs: 0, severity: 'warning' });
    expect(byName.get('EdgefleetDesiredFailed')).toMatchObject({ forMs: 0, severity: 'critical' });
    expect(byName.get('EdgefleetRolloutHalted')).toMatchObject({ forMs: 0, severity: 'critical' });
    // Written out, the file says what the defaults are: a bare rule gives the same.
    for (const r of rules.rules) {
      const bare = parseRules(`rules:\n  - alert: ${r.alert}\n`).rules[0];
      expect(bare).toEqual(r);
    }
    expect(rules.receivers).toEqual([{ name: 'ops', url: 'http://127.0.0.1:9095/alerts', headers: {}, timeoutMs: 10_000 }]);
  });

  it('takes JSON, scopes, edited thresholds, headers and the external URL', () => {
    const rules = parseRules(JSON.stringify({
      externalURL: 'https://fleet.example.com/',
      receivers: [{ name: 'pager', url: 'https://hooks.example.com/x', headers: { Authorization: 'Bearer t0k' }, timeout: '3s' }],
      rules: [
        { alert: 'EdgefleetErrorRateHigh' },
        { alert: 'EdgefleetErrorRateHigh', group: 'lab', threshold: 5, for: '30s', severity: 'critical' },
        { alert: 'EdgefleetLatencyP99High', model: 'mnist', threshold: 80, for: '2m' },
        { alert: 'EdgefleetTelemetryDropped', window: '1h' },
      ],
    }));
    expect(rules.externalURL).toBe('https://fleet.example.com');
    expect(rules.receivers).toEqual([{ name: 'pager', url: 'https://hooks.example.com/x', headers: { Authorization: 'Bearer t0k' }, timeoutMs: 3000 }]);
    expect(rules.rules.map((r) => r.id)).toEqual([
      'EdgefleetErrorRateHigh', 'EdgefleetErrorRateHigh group=lab', 'EdgefleetLatencyP99High model=mnist', 'EdgefleetTelemetryDropped',
    ]);
    expect(rules.rules[1]).toMatchObject({ threshold: 5, forMs: 30_000, severity: 'critical', group: 'lab' });
    expect(rules.rules[2]).toMatchObject({ threshold: 80, forMs: 120_000, model: 'mnist' });
    expect(rules.rules[3]?.windowMs).toBe(3_600_000);
  });

  it('durations: 0, ms, s, m, h, d; nothing else', () => {
    expect([parseDuration(0), parseDuration('0'), parseDuration('250ms'), parseDuration('30s'), parseDuration('5m'), parseDuration('1h'), parseDuration('2d')])
      .toEqual([0, 0, 250, 30_000, 300_000, 3_600_000, 172_800_000]);
    for (const bad of ['5 minutes', '5', 5, '-1m', '1.5h', '', null]) expect(parseDuration(bad)).toBeUndefined();
  });

  it('reports every problem at once, each with its path', () => {
    const text = `
externalURL: ftp://nowhere
receivers:
  - name: ops
    url: not a url
    timeout: 50ms
    header: { a: b }
  - name: ops
    url: http://x.example/
rules:
  - alert: EdgefleetErrorRateHigh
    for: 5 minutes
  - alert: EdgefleetCpuHigh
  - alert: EdgefleetDeviceOffline
    threshold: 3
  - alert: EdgefleetTemperatureHigh
    threshold: hot
    treshold: 70
  - alert: EdgefleetGpuBusy
    window: 10m
    group: "bad group"
    model: MNIST
    severity: Page!
  - alert: EdgefleetErrorRateHigh
`;
    expect(problems(text)).toEqual([
      'externalURL: must be an http:// or https:// URL',
      'receivers[0].url: must be an http:// or https:// URL',
      'receivers[0].timeout: must be from 100ms to 5m',
      'receivers[0]: unknown key(s) "header"',
      'rules[0].for: "5 minutes" is not a duration such as 30s, 5m, 1h',
      'rules[1].alert: "EdgefleetCpuHigh" is not one of EdgefleetErrorRateHigh, EdgefleetLatencyP99High, EdgefleetGpuBusy, EdgefleetDeviceOffline, EdgefleetTemperatureHigh, EdgefleetTelemetryDropped, EdgefleetDesiredFailed, EdgefleetRolloutHalted',
      'rules[3].threshold: must be a number',
      'rules[3]: unknown key(s) "treshold"',
      'rules[4].severity: must be 1-32 lower-case letters, such as warning or critical',
      "rules[4].group: must be a group name: 1-64 letters, digits, '_', '.', '-'",
      "rules[4].model: must be a model name: 1-63 of a-z, 0-9, '_', '-'",
    ]);
  });

  it('checks the rules together once each one is well formed', () => {
    expect(problems(`
receivers:
  - { name: ops, url: "http://a.example/" }
  - { name: ops, url: "http://b.example/" }
rules:
  - { alert: EdgefleetDeviceOffline, threshold: 3 }
  - { alert: EdgefleetGpuBusy, window: 10m }
  - { alert: EdgefleetTelemetryDropped, window: 0 }
  - { alert: EdgefleetErrorRateHigh, group: lab }
  - { alert: EdgefleetErrorRateHigh, group: lab, threshold: 2 }
`)).toEqual([
      'receivers[1].name: "ops" is named twice',
      'rules[0].threshold: EdgefleetDeviceOffline has no threshold',
      'rules[1].window: only EdgefleetTelemetryDropped has a window',
      'rules[2].window: must be more than 0',
      'rules[4]: same alert and scope as rules[3] (EdgefleetErrorRateHigh group=lab); give one of them a group or model',
    ]);
  });

  it('refuses a file without rules, of the wrong shape, or that is not YAML or JSON', async () => {
    expect(problems('receivers: []\n')).toEqual(['rules: is required']);
    expect(problems('rules: []\n')).toEqual(['rules: must list at least one rule']);
    expect(problems('- alert: EdgefleetGpuBusy\n')[0]).toMatch(/^\(document\): /);
    expect(problems('rules:\n  - alert: EdgefleetGpuBusy\n    threshold: -5\n')).toEqual(['rules[0].threshold: must be 0 or more']);
    expect(() => parseRules('rules:\n  - alert: [unclosed\n', 'rules.yaml')).toThrow(/^rules.yaml could not be read as YAML or JSON: /);
    expect(() => parseRules('{"rules": [', 'rules.json')).toThrow(/^rules.json could not be read as YAML or JSON: /);
    expect(() => parseRules('rules: 1\nrules: 2\n', 'rules.yaml')).toThrow(/could not be read as YAML or JSON: .*unique/i);
    await expect(loadRules('/nonexistent/rules.yaml')).rejects.toThrow(/^cannot read the alert rules \/nonexistent\/rules.yaml: ENOENT/);
  });

  it('the defaults table covers every alert', () => {
    expect(Object.keys(ALERT_DEFAULTS).sort()).toEqual([...ALERT_NAMES].sort());
  });
});
