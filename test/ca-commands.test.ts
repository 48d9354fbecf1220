/**
 * `edgefleet ca init | sign | server-cert` against the real openssl, with the
 * results checked by Node's own X.509 parser.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { caInit } from '../fleet/commands/ca-init.js';
import { caServerCert, subjectAltName } from '../fleet/commands/ca-server-cert.js';
import { caSign, csrCommonName } from '../fleet/commands/ca-sign.js';
import type { Command } from '../fleet/command.js';
import { FailureError, UsageError } from '../fleet/errors.js';

function opensslSkipReason(): string | false {
  if (spawnSync('openssl', ['version']).status === 0) return false;
  if (process.env.CI) throw new Error('openssl is missing but CI is set: apt-get install -y openssl');
  return 'openssl not found; apt-get install -y openssl to run the CA tests';
}
const skip = opensslSkipReason();

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

let dir: string;
const printed: string[] = [];

async function run(command: Command, args: string[]): Promise<{ out: string[]; notes: string[] }> {
  const out: string[] = [];
  const notes: string[] = [];
  await command.run(args, { out: (l) => void out.push(l), note: (l) => void notes.push(l), stderr: { write: () => true }, cwd: dir });
  printed.push(...out, ...notes);
  return { out, notes };
}

/** A key and CSR made as a device would make them (provision.sh uses the same openssl calls). */
function makeCsr(name: string, subject: string, keyArgs = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'], extra: string[] = []): string {
  const csr = join(dir, `${name}.csr`);
  execFileSync('openssl', ['req', '-new', ...keyArgs, '-nodes', '-keyout', join(dir, `${name}.key`), '-subj', subject, ...extra, '-out', csr], { stdio: 'pipe' });
  return csr;
}

const cert = async (path: string): Promise<X509Certificate> => new X509Certificate(await readFile(path));
const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-ca-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  // Key material never reaches stdout or stderr.
  expect(printed.join('\n')).not.toMatch(/PRIVATE KEY/);
});

describe('csrCommonName', () => {
  it('takes exactly one CN and nothing else', () => {
    expect(csrCommonName('subject=CN=pi-001')).toBe('pi-001');
    expect(csrCommonName('subject=CN=pi-001,O=acme')).toBeUndefined();
    expect(csrCommonName('subject=CN=a+CN=b')).toBeUndefined();
    expect(csrCommonName('subject=O=acme')).toBeUndefined();
  });
});

describe('subjectAltName', () => {
  it('accepts DNS names and IP addresses, typed or bare', () => {
    expect(subjectAltName('broker.example')).toBe('DNS:broker.example');
    expect(subjectAltName('10.0.0.5')).toBe('IP:10.0.0.5');
    expect(subjectAltName('ip:::1')).toBe('IP:::1');
    expect(subjectAltName('DNS:*.fleet.example')).toBe('DNS:*.fleet.example');
    expect(() => subjectAltName('IP:broker')).toThrow(UsageError);
    expect(() => subjectAltName('bad name')).toThrow(UsageError);
  });
});

describe.skipIf(skip)('edgefleet ca', () => {
  let ca: X509Certificate;

  it('init makes an EC CA key (0600) and a self-signed CA certificate', async () => {
    const { out } = await run(caInit, ['--out', 'ca', '--days', '30']);
    ca = await cert(join(dir, 'ca', 'ca.pem'));
    expect(out).toEqual([ca.fingerprint256]);
    expect(await mode(join(dir, 'ca', 'ca.key'))).toBe(0o600);
    expect(await mode(join(dir, 'ca', 'ca.pem'))).toBe(0o644);
    expect(ca.ca).toBe(true);
    expect(ca.subject).toBe('CN=edgefleet CA');
    expect(ca.checkIssued(ca)).toBe(true);
    expect(ca.verify(ca.publicKey)).toBe(true);
    expect(ca.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    const days = (Date.parse(ca.validTo) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(29);
    expect(days).toBeLessThan(31);
    // Nothing but the two files (the scratch folder is gone).
    expect((await readdir(join(dir, 'ca'))).sort()).toEqual(['ca.key', 'ca.pem']);
  });

  it('init refuses to replace an existing CA without --force', async () => {
    const before = await readFile(join(dir, 'ca', 'ca.key'));
    await expect(run(caInit, ['--out', 'ca'])).rejects.toThrow(FailureError);
    await expect(run(caInit, ['--out', 'ca'])).rejects.toThrow(/already exists; pass --force/);
    expect(await readFile(join(dir, 'ca', 'ca.key'))).toEqual(before);
  });

  it('sign issues a client certificate for a valid device id', async () => {
    const csr = makeCsr('pi-001', '/CN=pi-001');
    const { out } = await run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'pi-001.pem', '--days', '10']);
    const device = await cert(join(dir, 'pi-001.pem'));
    expect(out).toEqual([device.fingerprint256]);
    expect(device.subject).toBe('CN=pi-001');
    expect(device.issuer).toBe('CN=edgefleet CA');
    expect(device.ca).toBe(false);
    expect(device.checkIssued(ca) && device.verify(ca.publicKey)).toBe(true);
    expect(device.keyUsage).toEqual([CLIENT_AUTH]);
    // The certificate is for the key the device holds.
    const pub = execFileSync('openssl', ['pkey', '-in', join(dir, 'pi-001.key'), '-pubout']).toString();
    expect(device.publicKey.export({ type: 'spki', format: 'pem' }).toString()).toBe(pub);
    const days = (Date.parse(device.validTo) - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(9);
    expect(days).toBeLessThan(11);
  });

  it('sign ignores a CA:TRUE the request asks for', async () => {
    const csr = makeCsr('sneaky', '/CN=pi-009', undefined, ['-addext', 'basicConstraints=critical,CA:TRUE']);
    await run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'sneaky.pem']);
    expect((await cert(join(dir, 'sneaky.pem'))).ca).toBe(false);
  });

  it('sign accepts RSA 2048 and refuses Ed25519 and short RSA keys', async () => {
    await run(caSign, ['--ca', 'ca', '--csr', makeCsr('rsa', '/CN=rsa-board', ['-newkey', 'rsa:2048']), '--out', 'rsa.pem']);
    expect((await cert(join(dir, 'rsa.pem'))).subject).toBe('CN=rsa-board');
    await expect(run(caSign, ['--ca', 'ca', '--csr', makeCsr('ed', '/CN=ed-board', ['-newkey', 'ed25519']), '--out', 'ed.pem'])).rejects.toThrow(/key type ed25519 is not accepted/);
    await expect(run(caSign, ['--ca', 'ca', '--csr', makeCsr('rsa1k', '/CN=rsa-small', ['-newkey', 'rsa:1024']), '--out', 'rsa1k.pem'])).rejects.toThrow(/rsa 1024 bits is not accepted/);
  });

  it('sign refuses a CN that is not a device id, or a subject with more than the CN', async () => {
    const bad = makeCsr('bad', '/CN=bad id!');
    await expect(run(caSign, ['--ca', 'ca', '--csr', bad, '--out', 'bad.pem'])).rejects.toThrow(/CN "bad id!" is not a valid device id/);
    const dot = makeCsr('dot', '/CN=.hidden');
    await expect(run(caSign, ['--ca', 'ca', '--csr', dot, '--out', 'dot.pem'])).rejects.toThrow(/CN ".hidden" is not a valid device id/);
    const extra = makeCsr('extra', '/O=acme/CN=pi-001');
    await expect(run(caSign, ['--ca', 'ca', '--csr', extra, '--out', 'extra.pem'])).rejects.toThrow(/subject must be exactly CN=<device id>/);
    const plus = makeCsr('plus', '/CN=pi\\+1');
    await expect(run(caSign, ['--ca', 'ca', '--csr', plus, '--out', 'plus.pem'])).rejects.toThrow(/subject must be exactly CN=<device id>/);
    const multi = makeCsr('multi', '/CN=pi-003+UID=x');
    await expect(run(caSign, ['--ca', 'ca', '--csr', multi, '--out', 'multi.pem'])).rejects.toThrow(/subject must be exactly CN=<device id>/);
    for (const f of ['bad.pem', 'dot.pem', 'extra.pem', 'plus.pem', 'multi.pem']) await expect(stat(join(dir, f))).rejects.toThrow();
  });

  it('sign refuses a request whose signature does not verify', async () => {
    const csr = makeCsr('tampered', '/CN=pi-010');
    const pem = await readFile(csr, 'utf8');
    const der = Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
    der[der.length - 3] = (der[der.length - 3] ?? 0) ^ 0xff; // inside the signature
    const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
    await writeFile(csr, `-----BEGIN CERTIFICATE REQUEST-----\n${lines.join('\n')}\n-----END CERTIFICATE REQUEST-----\n`);
    await expect(run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'tampered.pem'])).rejects.toThrow(/not a valid certificate request \(its signature does not verify\)/);
  });

  it("sign keeps the operator's identity for --operator", async () => {
    const csr = makeCsr('admin', '/CN=fleet-admin');
    await expect(run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'admin.pem'])).rejects.toThrow(/fleet operator's identity.*--operator/);
    await run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'admin.pem', '--operator']);
    expect((await cert(join(dir, 'admin.pem'))).subject).toBe('CN=fleet-admin');
  });

  it("sign keeps the collectors' identity for --collector; --operator does not stand in for it", async () => {
    const csr = makeCsr('collector', '/CN=fleet-collector');
    await expect(run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'collector.pem'])).rejects.toThrow(/collectors' identity.*--collector/);
    await expect(run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'collector.pem', '--operator'])).rejects.toThrow(/--collector/);
    await run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'collector.pem', '--collector']);
    expect((await cert(join(dir, 'collector.pem'))).subject).toBe('CN=fleet-collector');
  });

  it('sign refuses to overwrite without --force, and a missing CA or CSR', async () => {
    const csr = join(dir, 'pi-001.csr');
    await expect(run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'pi-001.pem'])).rejects.toThrow(/already exists; pass --force/);
    await run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'pi-001.pem', '--force']);
    await expect(run(caSign, ['--ca', 'nowhere', '--csr', csr, '--out', 'x.pem'])).rejects.toThrow(/not found; --ca must name a folder made by 'edgefleet ca init'/);
    await expect(run(caSign, ['--ca', 'ca', '--csr', 'missing.csr', '--out', 'x.pem'])).rejects.toThrow(/cannot read --csr .*missing\.csr: no such file/);
    await expect(run(caSign, ['--ca', 'ca', '--out', 'x.pem'])).rejects.toThrow(UsageError);
    await expect(run(caSign, ['--ca', 'ca', '--csr', csr, '--out', 'x.pem', '--days', '0'])).rejects.toThrow(/--days must be an integer from 1 to 36500/);
  });

  it('server-cert makes the broker key (0600) and a server certificate with the SANs', async () => {
    const { out } = await run(caServerCert, ['--ca', 'ca', '--out', 'broker', '--san', 'localhost,127.0.0.1', '--san', 'DNS:broker.example']);
    const server = await cert(join(dir, 'broker', 'server.pem'));
    expect(out).toEqual([server.fingerprint256]);
    expect(await mode(join(dir, 'broker', 'server.key'))).toBe(0o600);
    expect(server.subject).toBe('CN=localhost');
    expect(server.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1, DNS:broker.example');
    expect(server.keyUsage).toEqual([SERVER_AUTH]);
    expect(server.ca).toBe(false);
    expect(server.checkIssued(ca) && server.verify(ca.publicKey)).toBe(true);
    expect(server.checkHost('broker.example')).toBe('broker.example');
    expect(server.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect((await readdir(join(dir, 'broker'))).sort()).toEqual(['server.key', 'server.pem']);
    await expect(run(caServerCert, ['--ca', 'ca', '--out', 'broker', '--san', 'localhost'])).rejects.toThrow(/already exists/);
    await expect(run(caServerCert, ['--ca', 'ca', '--out', 'broker2'])).rejects.toThrow(/missing --san/);
  });

  it('--json prints the fingerprint, the files and the expiry of what each command made', async () => {
    const init = JSON.parse((await run(caInit, ['--out', 'ca-json', '--days', '30', '--json'])).out.join('\n')) as Record<string, string>;
    const made = await cert(join(dir, 'ca-json', 'ca.pem'));
    expect(init).toEqual({ fingerprint256: made.fingerprint256, key: join(dir, 'ca-json', 'ca.key'), cert: join(dir, 'ca-json', 'ca.pem'), validTo: made.validTo });
    const csr = makeCsr('pi-json', '/CN=pi-json');
    const signed = JSON.parse((await run(caSign, ['--ca', 'ca-json', '--csr', csr, '--out', 'pi-json.pem', '--json'])).out.join('\n')) as Record<string, string>;
    expect(signed).toEqual({ fingerprint256: (await cert(join(dir, 'pi-json.pem'))).fingerprint256, cn: 'pi-json', cert: join(dir, 'pi-json.pem'), validTo: expect.any(String) });
    const server = JSON.parse((await run(caServerCert, ['--ca', 'ca-json', '--out', 'broker-json', '--san', 'localhost', '--json'])).out.join('\n')) as Record<string, unknown>;
    expect(server).toMatchObject({ key: join(dir, 'broker-json', 'server.key'), cert: join(dir, 'broker-json', 'server.pem'), subjectAltNames: ['DNS:localhost'] });
  });
});
