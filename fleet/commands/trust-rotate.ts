/** `edgefleet trust rotate`: the next trust version, signed by the old and the new root keys. */
import { parseArgs } from 'node:util';
import type { Envelope, SigningKey, Trust, TrustDocument } from '../../protocol/index.js';
import {
  PAYLOAD_TYPES, acceptRotation, buildTrustDocument, encodeDocument, signEnvelope, topics, trustDocumentSchema,
} from '../../protocol/index.js';
import { expiryOption, parseOrUsage, required, requiredList } from '../args.js';
import type { Command } from '../command.js';
import { FailureError, UsageError, errorMessage } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { readSigningKeys } from '../key-files.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings, withBroker } from '../mqtt.js';
import { JSON_OPTION, printResult } from '../result.js';
import { THRESHOLD_HELP, THRESHOLD_OPTIONS, readTrustFile, roleKeysFrom, warnSharedRootKeys } from '../trust-roles.js';

const OPTIONS = {
  current: { type: 'string' },
  'new-root': { type: 'string', multiple: true },
  'new-models': { type: 'string', multiple: true },
  'new-rollout': { type: 'string', multiple: true },
  ...THRESHOLD_OPTIONS,
  'sign-old': { type: 'string', multiple: true },
  'sign-new': { type: 'string', multiple: true },
  expires: { type: 'string' },
  out: { type: 'string' },
  'out-document': { type: 'string' },
  force: { type: 'boolean' },
  publish: { type: 'boolean' },
  ...JSON_OPTION,
  ...BROKER_OPTIONS,
} as const;

export const trustRotate: Command = {
  name: 'trust rotate',
  summary: 'sign the next trust version with the old and new root keys; optionally publish it',
  help: `usage: edgefleet trust rotate --current trust.json [--new-root KEY.pub[,...]] [--new-models ...]
                        [--new-rollout ...] --sign-old OLDROOT.key[,...] --sign-new NEWROOT.key[,...]
                        --out trust-v2.json [--out-document FILE] [--publish --broker URL]

Makes trust version current+1 (PROTOCOL.md section 3). Devices accept it only when
it is signed by the threshold of the current root keys AND of the new root keys;
the command checks exactly that before writing anything.

Options:
  --current FILE        the trust document in force (plain JSON or a previous --out envelope)
  --new-root, --new-models, --new-rollout KEY.pub[,...]
                        the role's new public keys; a role not given keeps its current keys
${THRESHOLD_HELP} (default: unchanged)
  --sign-old KEY[,...]  private keys of current root keys (the current root threshold of them)
  --sign-new KEY[,...]  private keys of new root keys (the new root threshold of them)
  --expires 10y|TIME    a duration from now or an RFC 3339 UTC time (default 10y)
  --out FILE            the signed DSSE envelope, as published on {root}/trust
  --out-document FILE   the plain new document, for provisioning new devices
                        (default: --out with .document.json in place of .json)
  --force               replace existing output files
  --publish             publish the envelope retained (QoS 1) on {root}/trust/{version},
                        then on {root}/trust; the versioned copies are never cleared, so
                        devices offline through several rotations walk the chain
  --json                print the result as JSON instead

${BROKER_HELP}`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const currentPath = required(values.current, 'current', 'trust.json');
    const out = required(values.out, 'out', 'FILE');
    const outDocument = values['out-document'] ?? `${out.replace(/\.json$/, '')}.document.json`;
    const oldKeyFiles = requiredList(values['sign-old'], 'sign-old', 'OLDROOT.key[,...]');
    const newKeyFiles = requiredList(values['sign-new'], 'sign-new', 'NEWROOT.key[,...]');
    if (!values.publish && values.broker !== undefined) throw new UsageError('--broker is used only with --publish');
    const broker = values.publish ? await brokerSettings(values, { warn: io.note }) : undefined;
    const expiresAt = expiryOption(values.expires ?? '10y', 'expires', Date.now());

    const current = await readTrustFile(currentPath);
    const keyFlags = { root: values['new-root'], models: values['new-models'], rollout: values['new-rollout'] };
    const roles = await roleKeysFrom(keyFlags, (r) => `new-${r}`, values, current);
    warnSharedRootKeys(roles, io.note);
    const next = buildTrustDocument({ version: current.version + 1, expiresAt, roles });
    const signers = await signersFor(current, next, oldKeyFiles, newKeyFiles, io.note);
    const envelope = signRotation(current, next, signers);

    const force = values.force === true;
    await writeFileAtomic(out, `${JSON.stringify(envelope, null, 2)}\n`, { overwrite: force });
    await writeFileAtomic(outDocument, `${JSON.stringify(next, null, 2)}\n`, { overwrite: force });
    const written = `wrote ${out} (signed trust version ${next.version}, expires ${expiresAt}) and ${outDocument} (plain document)`;
    const result = { version: next.version, expiresAt, out, outDocument, published: [] as string[] };
    if (values.json !== true) io.out(written);
    if (broker !== undefined) {
      const payload = Buffer.from(JSON.stringify(envelope));
      // The versioned copy first: a device that sees the new head can then always find the link to it.
      const linkTopic = topics.trustVersion(broker.topicRoot, next.version);
      const headTopic = topics.trust(broker.topicRoot);
      await withBroker(broker, async (b) => {
        await b.publish(linkTopic, payload, true);
        await b.publish(headTopic, payload, true);
      });
      result.published = [linkTopic, headTopic];
      if (values.json !== true) io.out(`published trust version ${next.version} retained on ${linkTopic} and ${headTopic}`);
    }
    if (values.json === true) printResult(io, true, written, result);
  },
};

/** The signing keys, after checking they are root keys of the right documents and meet both thresholds. */
async function signersFor(
  current: Trust, next: TrustDocument, oldFiles: string[], newFiles: string[], warn: (line: string) => void,
): Promise<SigningKey[]> {
  const check = (keys: SigningKey[], doc: TrustDocument, flag: string): void => {
    const { keyids, threshold } = doc.roles.root;
    const stranger = keys.find((k) => !keyids.includes(k.keyid));
    if (stranger) throw new FailureError(`--${flag} key ${stranger.keyid.slice(0, 12)}… is not a root key of trust version ${doc.version}`);
    if (keys.length < threshold) {
      throw new FailureError(`--${flag} gives ${keys.length} of the ${threshold} root key(s) trust version ${doc.version} needs`);
    }
  };
  const oldKeys = await readSigningKeys(oldFiles, warn);
  const newKeys = await readSigningKeys(newFiles, warn);
  check(oldKeys, current.document, 'sign-old');
  check(newKeys, next, 'sign-new');
  // A root key kept across the rotation signs once; devices count each key once anyway.
  const all = new Map([...oldKeys, ...newKeys].map((k) => [k.keyid, k]));
  return [...all.values()];
}

function signRotation(current: Trust, next: TrustDocument, signers: SigningKey[]): Envelope {
  const payload = encodeDocument(trustDocumentSchema, next, 'trust document');
  const envelope = signEnvelope(PAYLOAD_TYPES.trust, payload, signers);
  try {
    // Exactly the device's check, so what is written is what devices accept.
    acceptRotation(current, envelope);
  } catch (err) {
    throw new FailureError(`the rotated trust document would be rejected by devices: ${errorMessage(err)}`);
  }
  return envelope;
}
