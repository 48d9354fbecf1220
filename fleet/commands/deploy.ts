/** `edgefleet deploy`: sign and publish the desired state of a device or a group. */
import { parseArgs } from 'node:util';
import type { z } from 'zod';
import type { Envelope, Target } from '../../protocol/index.js';
import {
  DEVICE_ID_RE, GROUP_RE, MODEL_NAME_RE, PAYLOAD_TYPES, describeTarget, desiredSchema, encodeDocument, formatTime, isProtocolError,
  labelSchema, openEnvelope, parseTime, signEnvelope, topics,
} from '../../protocol/index.js';
import { expiryOption, intOption, parseOrUsage, requiredList } from '../args.js';
import type { Command } from '../command.js';
import { FailureError, UsageError, errorMessage } from '../errors.js';
import { readSigningKeys } from '../key-files.js';
import type { ManifestFile } from '../manifests.js';
import { collectManifests, manifestKey } from '../manifests.js';
import type { Broker } from '../mqtt.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings, withBroker } from '../mqtt.js';
import { checkAgainstTrust } from '../trust-roles.js';

const OPTIONS = {
  device: { type: 'string' },
  group: { type: 'string' },
  manifests: { type: 'string', multiple: true },
  key: { type: 'string', multiple: true },
  expires: { type: 'string' },
  serial: { type: 'string' },
  none: { type: 'boolean' },
  trust: { type: 'string' },
  'wait-ms': { type: 'string' },
  ...BROKER_OPTIONS,
} as const;

export const deploy: Command = {
  name: 'deploy',
  summary: 'sign and publish what a device or group must serve',
  help: `usage: edgefleet deploy (--device ID | --group NAME) NAME:VERSION[=LABEL[,LABEL...]] ...
                  --manifests DIR|FILE[,...] --key ROLLOUT.key --broker URL [options]

Builds the desired-state document (PROTOCOL.md section 6) listing exactly the model
versions the target must serve, embeds their signed manifests, signs it with the
rollout role's key(s) and publishes it retained (QoS 1) on
{root}/devices/{id}/desired or {root}/groups/{group}/desired. Versions not listed are
unloaded by the devices; listing an older version is an explicit rollback.

Arguments:
  NAME:VERSION[=LABELS]  e.g. mnist:3=stable mnist:4=canary

Options:
  --device ID            target one device, or
  --group NAME           target a group
  --manifests PATH[,...] manifest files, or directories searched for *.manifest.json
  --key FILE[,FILE...]   private key(s) of the rollout role
  --expires 30d|TIME     expiry of the document (default 30d)
  --serial N             serial to use (default: one above the serial retained on the topic)
  --none                 list no models: the target unloads everything
  --trust FILE           check the signatures against this trust document first
  --wait-ms MS           how long to wait for the retained document (default 1000)

${BROKER_HELP}`,

  async run(args, io) {
    const { values, positionals } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: true }));
    const target = targetOf(values.device, values.group);
    const refs = positionals.map(parseRef);
    if (refs.length === 0 && !values.none) throw new UsageError('name at least one NAME:VERSION to serve (or --none to unload everything)');
    if (refs.length > 0 && values.none) throw new UsageError('--none and NAME:VERSION exclude each other');
    const manifestPaths = refs.length > 0 ? requiredList(values.manifests, 'manifests', 'DIR|FILE') : [];
    const keyFiles = requiredList(values.key, 'key', 'ROLLOUT.key');
    const explicitSerial = intOption(values.serial, 'serial', 0);
    const waitMs = intOption(values['wait-ms'], 'wait-ms', 0, 600_000) ?? 1000;
    const now = Date.now();
    const expiresAt = expiryOption(values.expires ?? '30d', 'expires', now);
    const broker = await brokerSettings(values);

    const found = await collectManifests(manifestPaths);
    const models = refs.map((ref) => ({ ...ref, manifest: manifestFor(ref, found, manifestPaths, now).envelope }));
    const keys = await readSigningKeys(keyFiles, io.note);
    const topic = topics.desired(broker.topicRoot, target);
    await withBroker(broker, async (b) => {
      const serial = explicitSerial ?? (await nextSerial(b, topic, waitMs, io.note));
      const doc = { schema: 1 as const, target, serial, issuedAt: formatTime(now), expiresAt, models };
      const envelope = signEnvelope(PAYLOAD_TYPES.desired, encodeDesired(doc), keys);
      await checkAgainstTrust(values.trust, 'rollout', envelope, PAYLOAD_TYPES.desired);
      await b.publish(topic, Buffer.from(JSON.stringify(envelope)), true);
      const listed = models.map((m) => `${m.name}:${m.version}${m.labels.length ? `=${m.labels.join(',')}` : ''}`).join(' ') || 'no models';
      io.out(`deployed to ${describeTarget(target)}: serial ${serial}, ${listed} (${topic})`);
    });
  },
};

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

/**
 * One above the serial of the document retained on `topic`, read without
 * checking its signature: only the number matters, and devices refuse any
 * document whose serial is not above the last one they applied.
 */
async function nextSerial(broker: Broker, topic: string, waitMs: number, note: (line: string) => void): Promise<number> {
  const got = await broker.collectRetained([topic], { quietMs: waitMs, complete: (m) => m.size > 0 });
  const payload = got.get(topic);
  if (payload === undefined) {
    note(`no desired state retained on ${topic}; starting at serial 1 (pass --serial if its devices applied higher serials before)`);
    return 1;
  }
  const serial = retainedSerial(payload);
  if (serial === undefined) throw new FailureError(`the message retained on ${topic} is not a desired-state envelope; pass --serial N`);
  return serial + 1;
}

function retainedSerial(payload: Buffer): number | undefined {
  try {
    const envelope = JSON.parse(payload.toString('utf8')) as Envelope;
    const doc = JSON.parse(openEnvelope(envelope, PAYLOAD_TYPES.desired).payload.toString('utf8')) as { serial?: unknown };
    return Number.isSafeInteger(doc.serial) && (doc.serial as number) >= 0 ? (doc.serial as number) : undefined;
  } catch {
    return undefined;
  }
}
