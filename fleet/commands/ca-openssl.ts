/**
 * What the `edgefleet ca` commands share: the `openssl` CLI, EC P-256 keys
 * and the X.509 extensions of each kind of certificate.
 *
 * Node's crypto parses certificates (X509Certificate) but cannot issue them
 * or read a CSR, so issuing goes through the `openssl` command (1.1.1 or 3.x),
 * which every Debian and Raspberry Pi OS system has. Keys are made by Node and
 * written 0600 before openssl sees them; openssl never writes key material.
 */
import { execFile } from 'node:child_process';
import { X509Certificate, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { FailureError, UsageError } from '../errors.js';
import { exists, writeFileAtomic } from '../files.js';

export const CA_KEY = 'ca.key';
export const CA_CERT = 'ca.pem';

/** Runs openssl; a failure carries openssl's own message (never key material: it only prints errors). */
export async function openssl(args: readonly string[]): Promise<string> {
  return (await opensslOutput(args)).stdout;
}

/** openssl's stdout and stderr, for the commands that report a result on stderr. */
export function opensslOutput(args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    execFile('openssl', [...args], { maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolvePromise({ stdout, stderr });
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return reject(new FailureError('openssl not found: install it (apt-get install -y openssl)'));
      }
      const why = stderr.trim().split('\n').filter((l) => l.trim() !== '').slice(-3).join('; ');
      reject(new FailureError(`openssl ${args[0] ?? ''} failed: ${why || err.message}`));
    });
  });
}

/** A new EC P-256 private key as PKCS8 PEM: what TLS client and server certificates use here. */
export function newEcKeyPem(): string {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** A positive 127-bit serial in openssl's -set_serial hex form. */
export function newSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01;
  return `0x${bytes.toString('hex')}`;
}

/**
 * A scratch folder inside `dir`, removed afterwards: keys never pass through
 * a shared /tmp, and the results are moved into place atomically.
 */
export async function withScratch<T>(dir: string, work: (scratch: string) => Promise<T>): Promise<T> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const scratch = await mkdtemp(join(dir, '.edgefleet-ca-'));
  try {
    return await work(scratch);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Refuses, before anything is written, when an output exists and --force was not given. */
export async function refuseExisting(paths: readonly string[], force: boolean): Promise<void> {
  if (force) return;
  for (const path of paths) {
    if (await exists(path)) throw new FailureError(`${path} already exists; pass --force to replace it`);
  }
}

export interface CaFiles {
  keyPath: string;
  certPath: string;
  cert: X509Certificate;
}

/** The CA in `dir` (from `edgefleet ca init`), checked to be a CA certificate. */
export async function loadCa(cwd: string, dir: string): Promise<CaFiles> {
  const keyPath = resolve(cwd, dir, CA_KEY);
  const certPath = resolve(cwd, dir, CA_CERT);
  for (const path of [keyPath, certPath]) {
    if (!(await exists(path))) throw new FailureError(`${path} not found; --ca must name a folder made by 'edgefleet ca init'`);
  }
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(await readFile(certPath));
  } catch {
    throw new FailureError(`${certPath} is not a PEM certificate`);
  }
  if (!cert.ca) throw new FailureError(`${certPath} is not a CA certificate`);
  return { keyPath, certPath, cert };
}

/** Days of validity: 1 to 100 years. */
export function daysOption(value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > 36_500) throw new UsageError(`--days must be an integer from 1 to 36500, got "${value}"`);
  return n;
}

export type LeafKind = 'client' | 'server';

/** The extensions section `leaf` for openssl's -extfile: never a CA, one purpose. */
export function leafExtensions(kind: LeafKind, keyType: string, subjectAltNames: readonly string[] = []): string {
  // keyEncipherment only means something for RSA key transport.
  const usage = keyType === 'rsa' ? 'digitalSignature,keyEncipherment' : 'digitalSignature';
  const lines = [
    '[leaf]',
    'basicConstraints = critical,CA:FALSE',
    `keyUsage = critical,${usage}`,
    `extendedKeyUsage = ${kind === 'client' ? 'clientAuth' : 'serverAuth'}`,
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid,issuer',
  ];
  if (subjectAltNames.length > 0) lines.push(`subjectAltName = ${subjectAltNames.join(',')}`);
  return `${lines.join('\n')}\n`;
}

/**
 * Issues a certificate for the request `csrPath` (its public key; the subject
 * is checked by the caller) and returns it as PEM, verified against the CA.
 * The request's own extensions are never copied.
 */
export async function issue(options: { ca: CaFiles; csrPath: string; days: number; extensions: string; scratch: string }): Promise<X509Certificate> {
  const { ca, scratch } = options;
  const extfile = join(scratch, 'leaf.cnf');
  const out = join(scratch, 'leaf.pem');
  await writeFile(extfile, options.extensions, { mode: 0o600 });
  await openssl([
    'x509', '-req', '-in', options.csrPath, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-set_serial', newSerial(),
    '-days', String(options.days), '-sha256', '-extfile', extfile, '-extensions', 'leaf', '-out', out,
  ]);
  const cert = new X509Certificate(await readFile(out));
  if (!cert.checkIssued(ca.cert) || !cert.verify(ca.cert.publicKey)) throw new FailureError('the issued certificate does not verify against the CA (is ca.key the key of ca.pem?)');
  return cert;
}

/** The key type of a PEM public key: "ec" (P-256 or P-384) or "rsa" (2048 bits or more); anything else is refused. */
export function checkLeafKey(publicKeyPem: string, what: string): string {
  let key;
  try {
    key = createPublicKey(publicKeyPem);
  } catch {
    throw new FailureError(`${what}: cannot read its public key`);
  }
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'ec' && (details.namedCurve === 'prime256v1' || details.namedCurve === 'secp384r1')) return 'ec';
  if (key.asymmetricKeyType === 'rsa' && (details.modulusLength ?? 0) >= 2048) return 'rsa';
  const shown = key.asymmetricKeyType === 'ec' ? `ec ${details.namedCurve ?? '?'}` : key.asymmetricKeyType === 'rsa' ? `rsa ${details.modulusLength ?? '?'} bits` : String(key.asymmetricKeyType);
  throw new FailureError(`${what}: key type ${shown} is not accepted; use EC P-256 (or P-384) or RSA of 2048 bits or more`);
}

/** Writes a certificate (0644) atomically. */
export async function writeCert(path: string, cert: X509Certificate, force: boolean): Promise<void> {
  await writeFileAtomic(path, cert.toString(), { mode: 0o644, overwrite: force });
}
