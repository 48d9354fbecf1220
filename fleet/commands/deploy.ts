/** `edgefleet deploy`: sign and publish the desired state of a device or a group. */
import { parseArgs } from 'node:util';
import type { z } from 'zod';
import type { Target } from '../../protocol/index.js';
import {
  DEVICE_ID_RE, GROUP_RE, MODEL_NAME_RE, PAYLOAD_TYPES, describeTarget, desiredSchema, encodeDocument, formatTime, isProtocolError,
  labelSchema, parseTime, signEnvelope,
} from '../../protocol/index.js';
import { expiryOption, intOption, parseOrUsage, requiredList } from '../args.js';
import type { Command, CommandIo } from '../command.js';
import { chooseSerial, readTargetSerials, targetName } from '../desired-serials.js';
import { FailureError, UsageError, errorMessage } from '../errors.js';
import { SIGNING_KEY_OPTIONS, readSigningKeys, signingKeyPaths } from '../key-files.js';
import type { ManifestFile } from '../manifests.js';
import { collectManifests, manifestKey } from '../manifests.js';
import type { BrokerSettings } from '../mqtt.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings, withBroker } from '../mqtt.js';
import { loadProfile } from '../profile.js';
import { JSON_HELP, JSON_OPTION, printResult } from '../result.js';
import { checkAgainstTrust } from '../trust-roles.js';

const OPTIONS = {
  device: { type: 'string' },
  group: { type: 'string' },
  manifests: { type: 'string', multiple: true },
  ...SIGNING_KEY_OPTIONS,
  expires: { type: 'string' },
  serial: { type: 'string' },
  none: { type: 'boolean' },
  clear: { type: 'boolean' },
  trust: { type: 'string' },
  'wait-ms': { type: 'string' },
  ...JSON_OPTION,
  ...BROKER_OPTIONS,
} as const;

export const deploy: Command = {
  name: 'deploy',
  summary: 'sign and publish what a device or group must serve',
  help: `usage: edgefleet deploy (--device ID | --group NAME) NAME:VERSION[=LABEL[,LABEL...]] ...
                  --manifests DIR|FILE[,...] --signing-key ROLLOUT.key --broker URL [options]
       edgefleet deploy (--device ID | --group NAME) --clear --broker URL [options]

Builds the desired-state document (PROTOCOL.md section 6) listing exactly the model
versions the target must serve, embeds their signed manifests, signs it with the
rollout role's key(s) and publishes it retained (QoS 1) on
{root}/devices/{id}/desired or {root}/groups/{group}/desired. Versions not listed are
unloaded by the devices; listing an older version is an explicit rollback.

A device's own document replaces its group's entirely: list every version the
group serves, with the group's labels, beside the one being tried.

The serial must be above the one retained on the topic and above every serial the
target's devices report having accepted from it (their retained state): devices
reject any other as a replay, so the command refuses it.

--clear removes the target's document (a zero-length retained message, PROTOCOL.md
section 10): a device then follows its group's document again. Clearing a group's
document leaves its devices on their next group's document, or on what they serve.

Arguments:
  NAME:VERSION[=LABELS]  e.g. mnist:3=stable mnist:4=canary

Options:
  --device ID            target one device, or
  --group NAME           target a group
  --manifests PATH[,...] manifest files, or directories searched for *.manifest.json
  --signing-key FILE[,FILE...]
                         private key(s) of the rollout role (was --key; default: the
                         profile's signingKeys.rollout)
  --expires 30d|TIME     expiry of the document (default 30d)
  --serial N             serial to use (default: one above the retained document's and
                         every serial the target's devices report)
  --none                 list no models: the target unloads everything
  --clear                remove the target's document instead of publishing one
  --trust FILE           check the signatures against this trust document first
  --wait-ms MS           how long to wait for retained messages (default 1000)
${JSON_HELP}

${BROKER_HELP}`,

  async run(args, io) {
    const { values, positionals } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: true }));
    const target = targetOf(values.device, values.group);
    const waitMs = intOption(values['wait-ms'], 'wait-ms', 0, 600_000) ?? 1000;
    const profile = await loadProfile(values.profile);
    if (values.clear) {
      const given = ['none', 'serial', 'manifests', 'expires', 'trust', 'signing-key', 'key'].filter((k) => values[k as keyof typeof values] !== undefined);
      if (positionals.length > 0 || given.length > 0) {
        throw new UsageError(`--clear publishes nothing to sign: leave out ${positionals.length > 0 ? 'NAME:VERSION' : `--${given[0] ?? ''}`}`);
      }
      await clear(target, await brokerSettings(values, { profile, warn: io.note }), waitMs, values.json === true, io);
      return;
    }
    const refs = positionals.map(parseRef);
    if (refs.length === 0 && !values.none) throw new UsageError('name at least one NAME:VERSION to serve (or --none to unload everything, or --clear to remove the document)');
    if (refs.length > 0 && values.none) throw new UsageError('--none and NAME:VERSION exclude each other');
    const manifestPaths = refs.length > 0 ? requiredList(values.manifests, 'manifests', 'DIR|FILE') : [];
    const keyFiles = signingKeyPaths(values, 'rollout', profile, io.note);
    const explicitSerial = intOption(values.serial, 'serial', 0);
    const now = Date.now();
    const expiresAt = expiryOption(values.expires ?? '30d', 'expires', now);
    const broker = await brokerSettings(values, { profile, warn: io.note });

    const found = await collectManifests(manifestPaths);
    const models = refs.map((ref) => ({ ...ref, manifest: manifestFor(ref, found, manifestPaths, now).envelope }));
    const keys = await readSigningKeys(keyFiles, io.note);
    await withBroker(broker, async (b) => {
      const known = await readTargetSerials(b, target, waitMs);
      const serial = chooseSerial(known, explicitSerial, io.note);
      const doc = { schema: 1 as const, target, serial, issuedAt: formatTime(now), expiresAt, models };
      const envelope = signEnvelope(PAYLOAD_TYPES.desired, encodeDesired(doc), keys);
      await checkAgainstTrust(values.trust, 'rollout', envelope, PAYLOAD_TYPES.desired);
      await b.publish(known.topic, Buffer.from(JSON.stringify(envelope)), true);
      const listed = models.map((m) => `${m.name}:${m.version}${m.labels.length ? `=${m.labels.join(',')}` : ''}`).join(' ') || 'no models';
      printResult(io, values.json === true, `deployed to ${describeTarget(target)}: serial ${serial}, ${listed} (${known.topic})`, {
        target, serial, topic: known.topic, issuedAt: doc.issuedAt, expiresAt, models: refs,
      });
    });
  },
};

/** Publishes the zero-length retained message that removes the target's document, saying what it removed. */
async function clear(target: Target, broker: BrokerSettings, waitMs: number, json: boolean, io: CommandIo): Promise<void> {
  await withBroker(broker, async (b) => {
    const known = await readTargetSerials(b, target, waitMs);
    if (target.group !== undefined) {
      io.note(`warning: removing the document of group ${target.group}: its devices without a document of their own fall back to ` +
        'their next group\'s document, and those with none keep serving what they serve now');
    }
    await b.publish(known.topic, Buffer.alloc(0), true);
    const last = Math.max(known.retained ?? -1, known.reported?.serial ?? -1);
    if (last >= 0) io.note(`devices remember serial ${last} from ${targetName(target)}: a later document for it needs a serial above ${last}`);
    const what = known.retained === undefined ? 'no document was retained there' : `removed serial ${known.retained}`;
    const then = target.device !== undefined ? `; ${target.device} follows its groups' documents again` : '';
    printResult(io, json, `cleared ${describeTarget(target)} (${known.topic}): ${what}${then}`, {
      target, topic: known.topic, cleared: true, removedSerial: known.retained ?? null, lastSerial: last >= 0 ? last : null,
    });
  });
}

function targetOf(device: string | undefined, group: string | undefined): Target {
  if ((device === undefined) === (group === undefined)) throw new UsageError('pass exactly one of --device ID and --group NAME');
  if (device !== undefined) {
    if (!DEVICE_ID_RE.test(device)) throw new UsageError(`--device "${device}" is not a device id (1-64 of letters, digits, '_', '.', '-')`);
    return { device };
  }
  const g = group ?? '';
  if (!GROUP_RE.test(g)) throw new UsageError(`--group "${g}" is not a group name (1-64 of letters, digits, '_', '.', '-')`);
  return { group: g };
}

interface ModelRef {
  name: string;
  version: number;
  labels: string[];
}

/** NAME:VERSION[=LABEL,...]; the name is checked against the protocol's rule below. */
const REF_RE = /^([^:=]+):([1-9]\d*)(?:=(.*))?$/;

export function parseRef(text: string): ModelRef {
  const m = REF_RE.exec(text);
  const version = Number(m?.[2]);
  if (!m || !MODEL_NAME_RE.test(m[1] ?? '') || !Number.isSafeInteger(version)) {
    throw new UsageError(`"${text}" is not NAME:VERSION[=LABEL,...], e.g. mnist:3 or mnist:3=stable,latest`);
  }
  const labels = m[3] === undefined ? [] : m[3].split(',');
  const bad = labels.find((l) => !labelSchema.safeParse(l).success);
  if (bad !== undefined) throw new UsageError(`"${text}": label "${bad}" must be 1-64 of letters, digits, '_', '.', '-', starting with a letter or digit`);
  return { name: m[1] as string, version, labels };
}

function manifestFor(ref: ModelRef, found: ReadonlyMap<string, ManifestFile>, paths: readonly string[], now: number): ManifestFile {
  const key = manifestKey(ref.name, ref.version);
  const file = found.get(key);
  if (file === undefined) {
    throw new FailureError(`no manifest for ${key} in ${paths.join(', ')}; publish it with 'edgefleet model publish' or point --manifests at its file`);
  }
  const { expiresAt } = file.manifest;
  if (expiresAt !== undefined && (parseTime(expiresAt) ?? 0) <= now) {
    throw new FailureError(`the manifest of ${key} (${file.path}) expired at ${expiresAt}; devices would reject it: publish it again`);
  }
  return file;
}

/** Schema problems here come from the command line (a version listed twice, a label on two versions). */
function encodeDesired(doc: z.input<typeof desiredSchema>): Buffer {
  try {
    return encodeDocument(desiredSchema, doc, 'desired state');
  } catch (err) {
    if (isProtocolError(err, 'MALFORMED')) throw new UsageError(errorMessage(err));
    throw err;
  }
}
