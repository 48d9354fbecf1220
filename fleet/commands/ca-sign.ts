/** `edgefleet ca sign`: a device's TLS client certificate from its CSR. */
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { DEVICE_ID_RE } from '../../protocol/index.js';
import { parseOrUsage, required } from '../args.js';
import type { Command } from '../command.js';
import { FailureError } from '../errors.js';
import { readInput } from '../files.js';
import { JSON_OPTION, printResult } from '../result.js';
import { checkLeafKey, daysOption, issue, leafExtensions, loadCa, openssl, opensslOutput, refuseExisting, withScratch, writeCert } from './ca-openssl.js';

const OPTIONS = {
  ca: { type: 'string' },
  csr: { type: 'string' },
  out: { type: 'string' },
  days: { type: 'string' },
  operator: { type: 'boolean' },
  collector: { type: 'boolean' },
  force: { type: 'boolean' },
  ...JSON_OPTION,
} as const;

/** The broker's ACL (provisioning/mosquitto/acl) gives this name every topic. */
export const OPERATOR_CN = 'fleet-admin';
/** The ACL's collector user: reads every device's telemetry, events, status and state, writes their telemetry acks. */
export const COLLECTOR_CN = 'fleet-collector';

/**
 * The subject of a CSR when it is exactly one common name, else undefined.
 * RFC 2253 output escapes ',', '+', '=' and friends, none of which a device id
 * may hold, so anything but `CN=<id>` fails the match.
 */
export function csrCommonName(subjectLine: string): string | undefined {
  const m = /^subject=CN=([^,+]*)$/.exec(subjectLine.trim());
  return m?.[1];
}

export const caSign: Command = {
  name: 'ca sign',
  summary: "sign a device's CSR as a TLS client certificate (CN = device id)",
  help: `usage: edgefleet ca sign --ca DIR --csr FILE --out FILE [--days N] [--operator | --collector] [--force]

Signs a certificate request made on a device (provisioning/provision.sh writes
/etc/edgefleet/device.csr) as a TLS client certificate. The request's subject
must be exactly CN=<device id>, the id rules of PROTOCOL.md section 1; the
broker takes the CN as the MQTT user name (use_identity_as_username), so the
CN decides which topics the device may use. Extensions in the request are
ignored: the certificate is never a CA and serves only for client auth.
Prints the certificate's SHA-256 fingerprint on stdout.

Options:
  --ca DIR      folder made by 'edgefleet ca init' (ca.key, ca.pem)
  --csr FILE    the certificate request (PEM); EC P-256/P-384 or RSA >= 2048 keys
  --out FILE    where the certificate goes (PEM): copy it to the device as
                /etc/edgefleet/device.pem
  --days N      validity in days (default 1825)
  --operator    allow CN=${OPERATOR_CN}, the fleet operator's identity, to
                which the broker grants every topic; refused without it
  --collector   allow CN=${COLLECTOR_CN}, the collectors' identity, which
                reads every device's telemetry and writes its acknowledgements;
                refused without it
  --force       replace an existing --out file
  --json        print the fingerprint, CN, path and expiry as JSON instead`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const caDir = required(values.ca, 'ca', 'DIR');
    const csrPath = resolve(io.cwd, required(values.csr, 'csr', 'FILE'));
    const outPath = resolve(io.cwd, required(values.out, 'out', 'FILE'));
    const days = daysOption(values.days, 1825);
    const force = values.force === true;
    const ca = await loadCa(io.cwd, caDir);
    await readInput(csrPath, '--csr');
    await refuseExisting([outPath], force);

    // The request's self-signature shows the device holds the key. openssl 3.0 exits 0
    // even when it fails, so its verdict is read from the output.
    const bad = (why: string): FailureError => new FailureError(`--csr ${csrPath} is not a valid certificate request (${why})`);
    const checked = await opensslOutput(['req', '-in', csrPath, '-noout', '-verify', '-subject', '-nameopt', 'RFC2253']).catch((err: unknown) => {
      throw bad(err instanceof Error ? err.message : String(err));
    });
    if (!/verify OK/.test(checked.stderr + checked.stdout)) throw bad('its signature does not verify');
    const subject = checked.stdout;
    const line = subject.split('\n').find((l) => l.startsWith('subject=')) ?? '';
    const cn = csrCommonName(line);
    if (cn === undefined) throw new FailureError(`--csr ${csrPath}: the subject must be exactly CN=<device id>, got "${line.replace(/^subject=/, '')}"`);
    if (!DEVICE_ID_RE.test(cn)) throw new FailureError(`--csr ${csrPath}: CN "${cn}" is not a valid device id (1-64 letters, digits, '_', '.', '-', starting with a letter or digit)`);
    if (cn === OPERATOR_CN && values.operator !== true) {
      throw new FailureError(`--csr ${csrPath}: CN "${OPERATOR_CN}" is the fleet operator's identity (every topic); pass --operator if that is meant`);
    }
    if (cn === COLLECTOR_CN && values.collector !== true) {
      throw new FailureError(
        `--csr ${csrPath}: CN "${COLLECTOR_CN}" is the collectors' identity (every device's telemetry, and its acknowledgements); pass --collector if that is meant`,
      );
    }
    const keyType = checkLeafKey(await openssl(['req', '-in', csrPath, '-noout', '-pubkey']), `--csr ${csrPath}`);

    const cert = await withScratch(dirname(outPath), (scratch) => issue({ ca, csrPath, days, extensions: leafExtensions('client', keyType), scratch }));
    await writeCert(outPath, cert, force);
    io.note(`signed ${cn}: wrote ${outPath}, valid until ${cert.validTo}`);
    printResult(io, values.json === true, cert.fingerprint256, { fingerprint256: cert.fingerprint256, cn, cert: outPath, validTo: cert.validTo });
  },
};
