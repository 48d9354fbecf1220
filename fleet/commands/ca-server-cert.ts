/** `edgefleet ca server-cert`: the broker's TLS server key and certificate. */
import { writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseOrUsage, required, requiredList } from '../args.js';
import type { Command } from '../command.js';
import { UsageError } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { JSON_OPTION, printResult } from '../result.js';
import { daysOption, issue, leafExtensions, loadCa, newEcKeyPem, openssl, refuseExisting, withScratch, writeCert } from './ca-openssl.js';

const OPTIONS = {
  ca: { type: 'string' },
  out: { type: 'string' },
  name: { type: 'string' },
  san: { type: 'string', multiple: true },
  days: { type: 'string' },
  force: { type: 'boolean' },
  ...JSON_OPTION,
} as const;

const FILE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;
const DNS_NAME_RE = /^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** One --san entry as openssl's subjectAltName item: `DNS:name` or `IP:address`; a bare value is guessed. */
export function subjectAltName(entry: string): string {
  const m = /^(DNS|IP):(.+)$/i.exec(entry);
  const kind = m ? (m[1] ?? '').toUpperCase() : isIP(entry) ? 'IP' : 'DNS';
  const value = m ? (m[2] ?? '') : entry;
  if (kind === 'IP' && isIP(value) === 0) throw new UsageError(`--san ${entry}: not an IP address`);
  if (kind === 'DNS' && (!DNS_NAME_RE.test(value) || value.length > 253)) throw new UsageError(`--san ${entry}: not a DNS name`);
  return `${kind}:${value}`;
}

export const caServerCert: Command = {
  name: 'ca server-cert',
  summary: "create the broker's TLS server key and certificate, signed by the CA",
  help: `usage: edgefleet ca server-cert --ca DIR --out DIR --san NAME[,NAME...] [--name server] [--days N] [--force]

Creates the MQTT broker's TLS identity, signed by the CA of 'edgefleet ca init':
  OUT/NAME.key   EC P-256 private key, PKCS8 PEM, mode 0600 (mosquitto keyfile)
  OUT/NAME.pem   server certificate (mosquitto certfile)
and prints the certificate's SHA-256 fingerprint on stdout. Devices check the
broker's host name against the subject alternative names, so list every name
and address they connect to (the mqtts:// URL in agent.json).

Options:
  --ca DIR        folder made by 'edgefleet ca init' (ca.key, ca.pem)
  --out DIR       folder for the two files (created with mode 0700 if missing)
  --san NAMES     DNS:broker.example, IP:10.0.0.5, or a bare name or address;
                  repeatable or comma-separated; the first one is also the CN
  --name NAME     file name stem (default server)
  --days N        validity in days (default 825)
  --force         replace existing files
  --json          print the fingerprint, paths, names and expiry as JSON instead`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const caDir = required(values.ca, 'ca', 'DIR');
    const dir = resolve(io.cwd, required(values.out, 'out', 'DIR'));
    const sans = requiredList(values.san, 'san', 'NAME').map(subjectAltName);
    const name = values.name ?? 'server';
    if (!FILE_NAME_RE.test(name)) throw new UsageError(`--name "${name}" must be letters, digits, '_', '.', '-' (no path separators)`);
    const days = daysOption(values.days, 825);
    const force = values.force === true;
    const ca = await loadCa(io.cwd, caDir);
    const keyPath = join(dir, `${name}.key`);
    const certPath = join(dir, `${name}.pem`);
    await refuseExisting([keyPath, certPath], force);

    const cn = (sans[0] ?? '').replace(/^(DNS|IP):/, '');
    const cert = await withScratch(dir, async (scratch) => {
      const key = join(scratch, 'server.key');
      const csr = join(scratch, 'server.csr');
      const keyPem = newEcKeyPem();
      await writeFile(key, keyPem, { mode: 0o600 });
      const config = join(scratch, 'req.cnf');
      // Our own config, so the system's openssl.cnf (or its absence) changes nothing.
      await writeFile(config, ['[req]', 'distinguished_name = dn', 'prompt = no', '[dn]', `CN = ${cn}`, ''].join('\n'));
      await openssl(['req', '-new', '-config', config, '-key', key, '-out', csr]);
      const issued = await issue({ ca, csrPath: csr, days, extensions: leafExtensions('server', 'ec', sans), scratch });
      await writeFileAtomic(keyPath, keyPem, { mode: 0o600, overwrite: force });
      return issued;
    });
    await writeCert(certPath, cert, force);
    io.note(`wrote ${keyPath} (private) and ${certPath} for ${sans.join(', ')}, valid until ${cert.validTo}`);
    printResult(io, values.json === true, cert.fingerprint256, { fingerprint256: cert.fingerprint256, key: keyPath, cert: certPath, subjectAltNames: sans, validTo: cert.validTo });
  },
};
