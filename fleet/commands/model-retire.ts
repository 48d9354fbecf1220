/** `edgefleet model retire`: clear an artifact's retained blocks from the broker. */
import { parseArgs } from 'node:util';
import { SHA256_HEX_RE } from '../../protocol/index.js';
import { intOption, parseOrUsage } from '../args.js';
import { blockTopics } from '../artifact.js';
import type { Command } from '../command.js';
import { UsageError } from '../errors.js';
import { readManifestFile } from '../manifests.js';
import { BROKER_HELP, BROKER_OPTIONS, brokerSettings, withBroker } from '../mqtt.js';
import { JSON_OPTION, printResult } from '../result.js';

const OPTIONS = {
  sha256: { type: 'string' },
  blocks: { type: 'string' },
  manifest: { type: 'string' },
  'max-in-flight': { type: 'string' },
  ...JSON_OPTION,
  ...BROKER_OPTIONS,
} as const;

export const modelRetire: Command = {
  name: 'model retire',
  summary: "clear an artifact's retained blocks from the broker",
  help: `usage: edgefleet model retire (--manifest FILE | --sha256 HEX --blocks N) --broker URL

Publishes a zero-length retained message on each {root}/artifacts/{sha256}/blocks/{i},
which makes the broker forget the block (PROTOCOL.md section 5). Devices that still
list the version in their desired state can no longer download it: deploy
something else to them first.

Options:
  --manifest FILE       the signed manifest written by 'edgefleet model publish'
  --sha256 HEX          the artifact's SHA-256 (instead of --manifest)
  --blocks N            its number of blocks (with --sha256)
  --max-in-flight N     unacknowledged messages at a time (default 8)
  --json                print the result as JSON instead

${BROKER_HELP}`,

  async run(args, io) {
    const { values } = parseOrUsage(() => parseArgs({ args, options: OPTIONS, strict: true }));
    const byHash = values.sha256 !== undefined || values.blocks !== undefined;
    if (byHash === (values.manifest !== undefined)) throw new UsageError('pass either --manifest FILE or --sha256 HEX --blocks N');
    const maxInFlight = intOption(values['max-in-flight'], 'max-in-flight', 1, 1000) ?? 8;
    const broker = await brokerSettings(values, { warn: io.note });
    let sha: string;
    let count: number;
    if (values.manifest !== undefined) {
      const { artifact } = (await readManifestFile(values.manifest)).manifest;
      sha = artifact.sha256;
      count = artifact.blockSha256.length;
    } else {
      sha = values.sha256 ?? '';
      if (!SHA256_HEX_RE.test(sha)) throw new UsageError('--sha256 must be 64 lowercase hex digits');
      if (values.blocks === undefined) throw new UsageError('--sha256 needs --blocks N');
      count = intOption(values.blocks, 'blocks', 1) as number;
    }
    const empty = Buffer.alloc(0);
    const messages = blockTopics(broker.topicRoot, sha, count).map((topic) => ({ topic, payload: empty }));
    await withBroker(broker, (b) => b.publishAllRetained(messages, maxInFlight));
    printResult(io, values.json === true, `retired artifact ${sha}: cleared ${count} block topic(s)`, { sha256: sha, blocks: count, topics: messages.map((m) => m.topic) });
  },
};
