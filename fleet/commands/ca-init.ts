/** `edgefleet ca init`: the certificate authority behind the broker's mutual TLS. */
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseOrUsage, required } from '../args.js';
import type { Command } from '../command.js';
import { UsageError } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { JSON_OPTION, printResult } from '../result.js';
import { CA_CERT, CA_KEY, daysOption, newEcKeyPem, newSerial, openssl, refuseExisting, withScratch } from './ca-openssl.js';

const OPTIONS = {
  out: { type: 'string' },
  days: { type: 'string' },
  name: { type: 'string' },
  force: { type: 'boolean' },
  ...JSON_OPTION,
} as const;

const CA_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$/;

export const caInit: Command = {
  name: 'ca init',
  summary: 'create the TLS certificate authority (ca.key, ca.pem) for broker and device certificates',
  help: `usage: edgefleet ca init --out DIR [--days N] [--name "edgefleet CA"] [--force]

Creates the certificate authority that signs the broker's server certificate
and every device's TLS client certificate (mutual TLS, see
provisioning/mosquitto/edgefleet.conf):
  DIR/ca.key   EC P-256 private key, PKCS8 PEM, mode 0600: keep it offline
  DIR/ca.pem   self-signed CA certificate: goes to the broker (cafile) and to
               every device (/etc/edgefleet/ca.pem)
and prints the certificate's SHA-256 fingerprint on stdout.

This CA is for TLS identity only; model and rollout signatures use the trust
keys ('edgefleet keys generate', 'edgefleet trust init').

Options:
  --out DIR     folder for the two files (created with mode 0700 if missing)
  --days N      validity in days (default 3650)
  --name NAME   the CA's common name (default "edgefleet CA")
  --force       replace existing files (every certificate it signed stops verifying)
  --json        print the fingerprint, paths and expiry as JSON instead

Needs the openssl command (Node cannot issue certificates).`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const dir = resolve(io.cwd, required(values.out, 'out', 'DIR'));
    const days = daysOption(values.days, 3650);
    const name = values.name ?? 'edgefleet CA';
    if (!CA_NAME_RE.test(name)) throw new UsageError(`--name "${name}" must be 1-64 letters, digits, spaces, '_', '.', '-'`);
    const force = values.force === true;
    const keyPath = join(dir, CA_KEY);
    const certPath = join(dir, CA_CERT);
    await refuseExisting([keyPath, certPath], force);

    const cert = await withScratch(dir, async (scratch) => {
      const key = join(scratch, CA_KEY);
      const config = join(scratch, 'ca.cnf');
      const out = join(scratch, CA_CERT);
      await writeFile(key, newEcKeyPem(), { mode: 0o600 });
      // Our own config, so the system's openssl.cnf adds nothing.
      await writeFile(
        config,
        [
          '[req]', 'distinguished_name = dn', 'prompt = no', 'x509_extensions = v3_ca',
          '[dn]', `CN = ${name}`,
          '[v3_ca]', 'basicConstraints = critical,CA:TRUE,pathlen:0', 'keyUsage = critical,keyCertSign,cRLSign', 'subjectKeyIdentifier = hash', '',
        ].join('\n'),
      );
      await openssl(['req', '-new', '-x509', '-config', config, '-key', key, '-sha256', '-days', String(days), '-set_serial', newSerial(), '-out', out]);
      const pem = await readFile(out, 'utf8');
      await writeFileAtomic(keyPath, await readFile(key), { mode: 0o600, overwrite: force });
      await writeFileAtomic(certPath, pem, { mode: 0o644, overwrite: force });
      return new X509Certificate(pem);
    });
    io.note(`wrote ${keyPath} (private: keep it secret and offline) and ${certPath}, valid until ${cert.validTo}`);
    printResult(io, values.json === true, cert.fingerprint256, { fingerprint256: cert.fingerprint256, key: keyPath, cert: certPath, validTo: cert.validTo });
  },
};
