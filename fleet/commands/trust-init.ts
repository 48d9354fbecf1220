/** `edgefleet trust init`: the initial trust document devices are provisioned with. */
import { parseArgs } from 'node:util';
import { buildTrustDocument } from '../../protocol/index.js';
import { expiryOption, parseOrUsage, required } from '../args.js';
import type { Command } from '../command.js';
import { writeFileAtomic } from '../files.js';
import { JSON_OPTION, printResult } from '../result.js';
import { THRESHOLD_HELP, THRESHOLD_OPTIONS, roleKeysFrom, warnSharedRootKeys } from '../trust-roles.js';

const OPTIONS = {
  root: { type: 'string', multiple: true },
  models: { type: 'string', multiple: true },
  rollout: { type: 'string', multiple: true },
  ...THRESHOLD_OPTIONS,
  expires: { type: 'string' },
  out: { type: 'string' },
  force: { type: 'boolean' },
  ...JSON_OPTION,
} as const;

export const trustInit: Command = {
  name: 'trust init',
  summary: 'write the initial trust document (version 1) for provisioning devices',
  help: `usage: edgefleet trust init --root KEY.pub[,...] --models KEY.pub[,...] --rollout KEY.pub[,...]
                      --out trust.json [--expires 10y|TIME] [--threshold-root N ...] [--force]

Writes trust document version 1 (plain JSON, PROTOCOL.md section 3), to be
installed on every device out of band, e.g. as /etc/edgefleet/trust.json.

Options:
  --root, --models, --rollout KEY.pub[,KEY.pub...]
                        public key files (from 'edgefleet keys generate') of each role;
                        repeat the option or separate files with commas
${THRESHOLD_HELP} (default 1)
  --expires 10y|TIME    a duration (s, m, h, d, w, y) from now or an RFC 3339 UTC time (default 10y)
  --out FILE            where to write the document
  --force               replace an existing --out file
  --json                print the result as JSON instead`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const out = required(values.out, 'out', 'FILE');
    const expiresAt = expiryOption(values.expires ?? '10y', 'expires', Date.now());
    const roles = await roleKeysFrom({ root: values.root, models: values.models, rollout: values.rollout }, (r) => r, values);
    warnSharedRootKeys(roles, io.note);
    const doc = buildTrustDocument({ version: 1, expiresAt, roles });
    await writeFileAtomic(out, `${JSON.stringify(doc, null, 2)}\n`, { overwrite: values.force === true });
    const summary = (['root', 'models', 'rollout'] as const).map((r) => `${r} ${doc.roles[r].threshold} of ${doc.roles[r].keyids.length}`);
    const roleFigures = Object.fromEntries((['root', 'models', 'rollout'] as const).map((r) => [r, { threshold: doc.roles[r].threshold, keyids: doc.roles[r].keyids }]));
    printResult(io, values.json === true, `wrote ${out}: trust version 1, expires ${expiresAt}; ${summary.join(', ')}`, { out, version: 1, expiresAt, roles: roleFigures });
  },
};
