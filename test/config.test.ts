import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { editDistance, nearestKey } from '../agent/config/issues.js';
import { ConfigError, loadConfigFile, parseConfig } from '../agent/config/load.js';
import { labelSchema, modelNameSchema, ProtocolError, topics } from '../protocol/index.js';
import { REPO } from './helpers/child.js';

function problems(raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(raw, { env });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('agent config', () => {
  it('fills the documented defaults', () => {
    const c = parseConfig({ deviceId: 'pi-001' }, { baseDir: '/etc/edgefleet' });
    expect(c.http).toEqual({ host: '127.0.0.1', port: 8501, bodyLimitBytes: 64 * 1024 * 1024, maxInFlight: 1024, maxConnections: 1024 });
    expect(c.runtime.executionProviders).toEqual(['tensorrt', 'cuda', 'xnnpack', 'cpu']);
    expect(c.models.versionPolicy).toEqual({ latest: { numVersions: 1 } });
    expect(c.stateDir).toBe('/var/lib/edgefleet');
    expect(c.mqtt).toBeUndefined();
  });

  it('bounds MQTT packets: 1 MiB + 64 KiB by default, never below a whole artifact block or a telemetry batch', () => {
    const base = { deviceId: 'pi', trust: '/t.json', mqtt: { url: 'mqtt://h' } };
    expect(parseConfig(base).mqtt?.maxPacketBytes).toBe(1024 * 1024 + 64 * 1024);
    expect(problems({ ...base, mqtt: { url: 'mqtt://h', maxPacketBytes: 128 * 1024 } })).toEqual(['mqtt.maxPacketBytes: Too small: expected number to be >=196608']);
    expect(problems({ ...base, mqtt: { url: 'mqtt://h', maxPacketBytes: 300_000 } })).toEqual([
      'mqtt.maxPacketBytes: must be at least telemetry.upload.batchBytes + 65536 (327680): a telemetry batch must fit in one packet',
    ]);
    expect(problems({ ...base, mqtt: { url: 'mqtt://h', maxPacketBytes: 300_000 }, telemetry: { upload: { batchBytes: 200_000 } } })).toEqual([]);
    expect(problems({ deviceId: 'pi', http: { maxConnections: 0 } })).toEqual(['http.maxConnections: Too small: expected number to be >=1']);
  });

  it('telemetry.delivery and telemetry.ackTimeoutS (section 12): broker and 300 s by default, bad values named', () => {
    const base = { deviceId: 'pi', trust: '/t.json', mqtt: { url: 'mqtt://h' } };
    expect(parseConfig(base).telemetry).toMatchObject({ delivery: 'broker', ackTimeoutS: 300 });
    expect(parseConfig({ ...base, telemetry: { delivery: 'collector', ackTimeoutS: 60 } }).telemetry).toMatchObject({ delivery: 'collector', ackTimeoutS: 60 });
    // A misspelt mode, a fraction, a value out of bounds, a string: one line each.
    expect(problems({ ...base, telemetry: { delivery: 'collectors', ackTimeoutS: 2.5 } })).toEqual([
      'telemetry.delivery: must be "broker" (deleted on the broker\'s PUBACK) or "collector" (kept until a collector acknowledges them)',
      'telemetry.ackTimeoutS: must be a whole number of seconds',
    ]);
    expect(problems({ ...base, telemetry: { ackTimeoutS: 5 } })).toEqual(['telemetry.ackTimeoutS: Too small: expected number to be >=10']);
    expect(problems({ ...base, telemetry: { ackTimeoutS: 100_000 } })).toEqual(['telemetry.ackTimeoutS: Too big: expected number to be <=86400']);
    expect(problems({ ...base, telemetry: { ackTimeoutS: '300' } })).toEqual(['telemetry.ackTimeoutS: Invalid input: expected number, received string']);
  });

  it('accepts the full example of PROTOCOL.md section 9', () => {
    const c = parseConfig({
      deviceId: 'pi-001',
      groups: ['lab'],
      stateDir: '/var/lib/edgefleet',
      trust: '/etc/edgefleet/trust.json',
      mqtt: { url: 'mqtts://broker.example:8883', topicRoot: 'edgefleet', ca: '/etc/edgefleet/ca.pem', cert: '/etc/edgefleet/device.pem', key: '/etc/edgefleet/device.key' },
      http: { host: '127.0.0.1', port: 8501 },
      models: { dir: '/srv/models' },
      runtime: { executionProviders: ['tensorrt', 'cuda', 'xnnpack', 'cpu'] },
    });
    expect(c.mqtt?.topicRoot).toBe('edgefleet');
  });

  it('reports every problem at once, one line each, naming the key', () => {
    const found = problems({
      deviceId: '-bad',
      groups: ['ok', 'not ok'],
      http: { port: 'eighty', extra: 1 },
      runtime: { executionProviders: ['cpu', 'npu'], graphOptimizationLevel: 'max' },
      models: { versionPolicy: { newest: {} } },
      surprise: true,
    });
    expect(found.length).toBeGreaterThanOrEqual(7);
    for (const key of ['deviceId', 'groups.1', 'http.port', 'http: unknown key(s) "extra"', 'runtime.executionProviders.1', 'runtime.graphOptimizationLevel', 'models.versionPolicy', '(root): unknown key(s) "surprise"']) {
      expect(found.some((p) => p.startsWith(key))).toBe(true);
    }
  });

  it('suggests the nearest known key of the same object for an unknown one, case ignored', () => {
    const found = problems({
      deviceid: 'pi',
      mqtt: { url: 'mqtt://h', keepalive: 30, KEEPALIVES: 5, bogus: 1 },
      trust: '/t.json',
      http: { prot: 8501 },
      models: { config: { mnist: { lables: {}, batching: { maxBatchSize: 2, maxQueueDelayMs: 1, maxQueueSzie: 9 } } }, versionPolicy: { latest: { numVersion: 2 } } },
      telemetry: { health: { schedul: '* * * * *' }, upload: { batchpoints: 5 } },
      log: { levle: 'info' },
    });
    expect(found).toEqual(expect.arrayContaining([
      '(root): unknown key(s) "deviceid" (did you mean deviceId?)',
      'mqtt: unknown key(s) "keepalive" (did you mean keepaliveS?), "KEEPALIVES" (did you mean keepaliveS?), "bogus"',
      'http: unknown key(s) "prot" (did you mean port?)',
      'models.config.mnist: unknown key(s) "lables" (did you mean labels?)',
      'models.config.mnist.batching: unknown key(s) "maxQueueSzie" (did you mean maxQueueSize?)',
      'models.versionPolicy.latest: unknown key(s) "numVersion" (did you mean numVersions?)',
      'telemetry.health: unknown key(s) "schedul" (did you mean schedule?)',
      'telemetry.upload: unknown key(s) "batchpoints" (did you mean batchPoints?)',
      'log: unknown key(s) "levle" (did you mean level?)',
    ]));
    // Only keys of the same level are offered: "dir" lives in models, not in http.
    expect(problems({ deviceId: 'pi', http: { dir: '/m' } })).toEqual(['http: unknown key(s) "dir"']);
    // A union of objects names the keys it takes.
    expect(problems({ deviceId: 'pi', models: { versionPolicy: { lates: {} } } })).toEqual([
      'models.versionPolicy: unknown key(s) "lates" (did you mean latest?); must be an object with one of the keys latest, all, specific',
    ]);
  });

  it('counts edits, a swap of neighbours as one, and offers only near keys', () => {
    expect(editDistance('keepalive', 'keepalives')).toBe(1);
    expect(editDistance('levle', 'level')).toBe(1);
    expect(editDistance('', 'abc')).toBe(3);
    expect(editDistance('kitten', 'sitting')).toBe(3);
    expect(nearestKey('Port', ['host', 'port'])).toBe('port');
    expect(nearestKey('prot', ['host', 'port'])).toBe('port');
    expect(nearestKey('post', ['host', 'port'])).toBe('host'); // one edit from both: the first listed wins
    expect(nearestKey('url', ['uri'])).toBe('uri');
    expect(nearestKey('port', ['host'])).toBeUndefined();
    expect(nearestKey('surprise', ['deviceId', 'groups', 'stateDir', 'trust', 'mqtt'])).toBeUndefined();
    expect(nearestKey('x', [])).toBeUndefined();
  });

  it('requires a trust root and paired client certificate when mqtt is set', () => {
    expect(problems({ deviceId: 'pi', mqtt: { url: 'mqtt://localhost:1883', cert: '/c.pem' } })).toEqual([
      'trust: required when mqtt is set (the trust root verifies every rollout)',
      'mqtt: cert and key must be given together',
    ]);
    expect(problems({ deviceId: 'pi', mqtt: { url: 'http://x' }, trust: '/t' })[0]).toMatch(/^mqtt\.url: must be an mqtt/);
  });

  it('applies environment overrides before validation, so bad ones are reported too', () => {
    const c = parseConfig({ deviceId: 'pi' }, { env: { EDGEFLEET_HTTP_PORT: '9000', EDGEFLEET_GROUPS: 'lab, roof', EDGEFLEET_LOG_LEVEL: 'debug' } });
    expect(c.http.port).toBe(9000);
    expect(c.groups).toEqual(['lab', 'roof']);
    expect(c.log.level).toBe('debug');
    expect(problems({ deviceId: 'pi' }, { EDGEFLEET_HTTP_PORT: 'x' })).toEqual(['http.port: Invalid input: expected number, received string']);
  });

  it('names the file and the JSON error for an unreadable or broken file, and resolves relative paths', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-cfg-'));
    expect(() => loadConfigFile(join(dir, 'missing.json'), {})).toThrow(/missing\.json[\s\S]*cannot read the file/);
    await writeFile(join(dir, 'broken.json'), '{"deviceId": ');
    expect(() => loadConfigFile(join(dir, 'broken.json'), {})).toThrow(/broken\.json[\s\S]*not valid JSON/);
    await writeFile(join(dir, 'ok.json'), JSON.stringify({ deviceId: 'pi', stateDir: 'state', models: { dir: 'models' } }));
    const c = loadConfigFile(join(dir, 'ok.json'), {});
    expect(c.stateDir).toBe(join(dir, 'state'));
    expect(c.models.dir).toBe(join(dir, 'models'));
  });

  it("accepts exactly the names the wire protocol accepts: device id, groups, model names, labels, topic root", () => {
    const accepts = (fn: () => unknown): boolean => {
      try {
        fn();
        return true;
      } catch (err) {
        if (err instanceof ConfigError || err instanceof ProtocolError) return false;
        throw err;
      }
    };
    const config = (raw: Record<string, unknown>): boolean =>
      accepts(() => parseConfig({ deviceId: 'pi', ...raw, ...(raw.mqtt !== undefined && { trust: '/t.json' }) }));
    // The schemas the desired-state document checks its model names and labels with.
    const desired = (model: string, label: string): boolean => modelNameSchema.safeParse(model).success && labelSchema.safeParse(label).success;
    // Each list holds names both sides accept and names both refuse.
    expect([desired('mnist', 'v1.2'), desired('_x', 'stable'), desired('mnist', '_x')]).toEqual([true, false, false]);
    expect([config({ deviceId: 'pi-001' }), config({ deviceId: '-pi' })]).toEqual([true, false]);
    for (const id of ['pi-001', 'Pi.lab_2', '-pi', 'pi 1', 'a'.repeat(64), 'a'.repeat(65)]) {
      const wire = accepts(() => topics.device('edgefleet', id, 'state'));
      expect(config({ deviceId: id }), id).toBe(wire);
      expect(config({ groups: [id] }), id).toBe(accepts(() => topics.groupDesired('edgefleet', id)));
    }
    for (const name of ['mnist', 'res_net-50', 'MNIST', '_x', 'a.b']) {
      expect(config({ models: { config: { [name]: {} } } }), name).toBe(desired(name, 'stable'));
    }
    for (const label of ['stable', 'v1.2', 'Canary_2', '_x', '-x', 'a b']) {
      expect(config({ models: { config: { m: { labels: { [label]: 1 } } } } }), label).toBe(desired('m', label));
    }
    for (const root of ['edgefleet', 'acme/edgefleet', '/edgefleet', 'a//b', 'a/', 'a/+', 'a#']) {
      expect(config({ mqtt: { url: 'mqtt://h', topicRoot: root } }), root).toBe(accepts(() => topics.trust(root)));
    }
  });
});

/** Runs the real agent entry point, as systemd would, until it exits on its own. */
function runAgent(configFile: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'agent', 'bin.ts'), '--config', configFile], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`agent did not exit:\n${stdout}${stderr}`));
    }, 25_000);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('edgefleet-agent refusing its configuration', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-cfg-child-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function configFile(name: string, config: Record<string, unknown>): Promise<string> {
    const file = join(dir, name);
    const base = { deviceId: 'child', stateDir: join(dir, 'state'), http: { port: 0 }, runtime: { executionProviders: ['cpu'], warmupRuns: 0 } };
    await writeFile(file, JSON.stringify({ ...base, ...config }));
    return file;
  }

  it('a missing or unreadable trust file: plain text naming the file, exit 2', async () => {
    const missing = join(dir, 'missing-trust.json');
    const mqtt = { url: 'mqtt://127.0.0.1:1' };
    const file = await configFile('missing-trust.json.conf', { mqtt, trust: missing });
    const run = await runAgent(file);
    expect(run.code, run.stdout + run.stderr).toBe(2);
    expect(run.stderr).toBe(`edgefleet-agent: invalid configuration in ${file}:\n  trust: cannot use ${missing}: file not found\n`);

    const folder = join(dir, 'trust-folder');
    await mkdir(folder, { recursive: true });
    const other = await configFile('folder-trust.conf', { mqtt, trust: folder });
    const unreadable = await runAgent(other);
    expect(unreadable.code).toBe(2);
    expect(unreadable.stderr).toBe(`edgefleet-agent: invalid configuration in ${other}:\n  trust: cannot use ${folder}: cannot read (EISDIR)\n`);
  });

  it('an unknown key: exit 2, with the nearest known key', async () => {
    const file = await configFile('typo.conf', { htpp: { port: 0 } });
    const run = await runAgent(file);
    expect(run.code).toBe(2);
    expect(run.stderr).toBe(`edgefleet-agent: invalid configuration in ${file}:\n  (root): unknown key(s) "htpp" (did you mean http?)\n`);
    expect(run.stdout).toBe('');
  });
});
