/** `edgefleet keys generate`: a new Ed25519 signing key pair for one role. */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateKeyPair, privateKeyToPem, publicKeyToBase64 } from '../../protocol/index.js';
import { parseOrUsage, required } from '../args.js';
import type { Command } from '../command.js';
import { FailureError, UsageError } from '../errors.js';
import { exists, writeFileAtomic } from '../files.js';
import { JSON_OPTION, printResult } from '../result.js';

const OPTIONS = {
  out: { type: 'string' },
  name: { type: 'string' },
  force: { type: 'boolean' },
  ...JSON_OPTION,
} as const;

// Used as a file name: no separators, no leading dot.
const KEY_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;

export const keysGenerate: Command = {
  name: 'keys generate',
  summary: 'create an Ed25519 key pair (NAME.key, NAME.pub) and print its keyid',
  help: `usage: edgefleet keys generate --out DIR --name NAME [--force]

Creates an Ed25519 key pair for one trust role (root, models or rollout):
  DIR/NAME.key   private key, PKCS8 PEM, mode 0600: keep it offline
  DIR/NAME.pub   public key, the 32 raw bytes in base64: goes into trust documents
and prints the keyid (hex SHA-256 of the public key) on stdout.

Options:
  --out DIR     directory for the two files (created with mode 0700 if missing)
  --name NAME   file name stem, e.g. root-1, models, rollout
  --force       replace existing files (the old private key is lost)
  --json        print the keyid and both paths as JSON instead`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const dir = required(values.out, 'out', 'DIR');
    const name = required(values.name, 'name', 'NAME');
    if (!KEY_NAME_RE.test(name)) {
      throw new UsageError(`--name "${name}" must be letters, digits, '_', '.', '-' (no path separators), starting with a letter or digit`);
    }
    const force = values.force === true;
    const keyPath = join(dir, `${name}.key`);
    const pubPath = join(dir, `${name}.pub`);
    if (!force) {
      // Check both first, so a refused run writes neither file.
      for (const path of [keyPath, pubPath]) {
        if (await exists(path)) throw new FailureError(`${path} already exists; pass --force to replace it (the old key is lost)`);
      }
    }
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const pair = generateKeyPair();
    await writeFileAtomic(keyPath, privateKeyToPem(pair.privateKey), { mode: 0o600, overwrite: force });
    await writeFileAtomic(pubPath, `${publicKeyToBase64(pair.publicKey)}\n`, { mode: 0o644, overwrite: force });
    io.note(`wrote ${keyPath} (private: keep it secret and offline) and ${pubPath}`);
    printResult(io, values.json === true, pair.keyid, { keyid: pair.keyid, privateKey: keyPath, publicKey: pubPath });
  },
};
