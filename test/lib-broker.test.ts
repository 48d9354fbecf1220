import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBrokerUrl, mutualTlsProblem, readBrokerFiles, safeUrl } from '../lib/broker.js';

const NAMES = { ca: 'mqtt.ca', cert: 'mqtt.cert', key: 'mqtt.key', passwordFile: 'mqtt.passwordFile' };

class SideError extends Error {
  constructor(
    message: string,
    override readonly cause: unknown,
  ) {
    super(message);
  }
}
const error = (message: string, cause: unknown): Error => new SideError(message, cause);

/** What `promise` rejects with; fails the test when it resolves. */
async function failure(promise: Promise<unknown>): Promise<Error> {
  const outcome = await promise.then(
    () => undefined,
    (err: unknown) => err as Error,
  );
  if (outcome === undefined) throw new Error('expected a rejection');
  return outcome;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-broker-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('isBrokerUrl', () => {
  it.each(['mqtt://localhost:1883', 'mqtts://broker.example:8883', 'ws://h/mqtt', 'wss://h:443/mqtt', 'tcp://h', 'ssl://h', 'tls://h', 'mqtt://u:p@[::1]:1883'])(
    'accepts %s',
    (url) => expect(isBrokerUrl(url)).toBe(true),
  );
  it.each(['http://h', 'mqtt:/h', 'mqtt:///path', 'mqtt://h:99999', 'localhost:1883', '', 'mqtt://'])('refuses %j', (url) =>
    expect(isBrokerUrl(url)).toBe(false),
  );
});

describe('safeUrl', () => {
  it('drops user and password, and leaves a URL without them as it was', () => {
    expect(safeUrl('mqtts://device:s3cret@broker.example:8883/')).toBe('mqtts://broker.example:8883/');
    expect(safeUrl('postgres://fleet:pw@db/fleet')).toBe('postgres://db/fleet');
    expect(safeUrl('mqtt://127.0.0.1:1883')).toBe('mqtt://127.0.0.1:1883');
  });

  it('strips credentials from text that is not a valid URL too', () => {
    expect(safeUrl('mqtt://user:pw@host:99999')).toBe('mqtt://host:99999');
  });
});

describe('mutualTlsProblem', () => {
  it('names both settings when only one of cert and key is given', () => {
    expect(mutualTlsProblem({ cert: '/c.pem' }, NAMES)).toBe('mqtt.cert and mqtt.key must be set together for mutual TLS');
    expect(mutualTlsProblem({ key: '/k.pem' }, { ...NAMES, key: '--key-file', cert: '--cert' })).toBe(
      '--cert and --key-file must be set together for mutual TLS',
    );
    expect(mutualTlsProblem({ cert: '/c.pem', key: '/k.pem' }, NAMES)).toBeUndefined();
    expect(mutualTlsProblem({ ca: '/ca.pem' }, NAMES)).toBeUndefined();
  });
});

describe('readBrokerFiles', () => {
  it('reads what is named, and only the first line of the password file', async () => {
    await writeFile(join(dir, 'ca.pem'), 'CA');
    await writeFile(join(dir, 'pw'), 's3cret pass\r\nsecond line\n');
    const secrets = await readBrokerFiles({ ca: join(dir, 'ca.pem'), passwordFile: join(dir, 'pw') }, { names: NAMES, error });
    expect(secrets).toEqual({ ca: Buffer.from('CA'), password: Buffer.from('s3cret pass') });
    expect(await readBrokerFiles({}, { names: NAMES, error })).toEqual({});
  });

  it("fails with the caller's error naming the setting and the path, never the contents", async () => {
    const missing = join(dir, 'missing.pem');
    const err = await failure(readBrokerFiles({ cert: missing, key: missing }, { names: NAMES, error }));
    expect(err).toBeInstanceOf(SideError);
    expect(err.message).toBe(`mqtt.cert: cannot read ${missing} (ENOENT)`);
    expect(err.cause).toMatchObject({ code: 'ENOENT' });
    await expect(readBrokerFiles({ ca: dir }, { names: { ...NAMES, ca: '--ca' }, error })).rejects.toThrow(`--ca: cannot read ${dir} (EISDIR)`);
  });

  it.skipIf(userInfo().uid === 0)('reports a file it may not read', async () => {
    const key = join(dir, 'device.key');
    await writeFile(key, '-----BEGIN PRIVATE KEY-----\nsecret\n');
    await chmod(key, 0o000);
    const err = await failure(readBrokerFiles({ key, cert: key }, { names: NAMES, error }));
    expect(err.message).toBe(`mqtt.cert: cannot read ${key} (EACCES)`);
    expect(err.message).not.toContain('secret');
  });
});
