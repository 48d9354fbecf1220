/**
 * The fleet side of the demo, done with the real `edgefleet` commands run
 * in-process: keys for the three trust roles, the trust document the device
 * is provisioned with, `model publish` (blocks retained on the broker, a
 * signed manifest with a self-test) and `deploy` (a signed desired document
 * for one device). Every command speaks MQTT 3.1.1 to the embedded broker.
 */
import { join } from 'node:path';
import type { CommandIo } from '../fleet/command.js';
import type { Command } from '../fleet/command.js';
import { deploy } from '../fleet/commands/deploy.js';
import { keysGenerate } from '../fleet/commands/keys-generate.js';
import { modelPublish } from '../fleet/commands/model-publish.js';
import { trustInit } from '../fleet/commands/trust-init.js';

export interface FleetPaths {
  keysDir: string;
  trust: string;
  manifestsDir: string;
}

export function fleetPaths(home: string): FleetPaths {
  return { keysDir: join(home, 'keys'), trust: join(home, 'trust.json'), manifestsDir: join(home, 'manifests') };
}

/** Runs one command; returns what it printed on stdout. Notes (stderr) are dropped: the demo prints its own lines. */
async function run(command: Command, args: string[], cwd: string): Promise<string[]> {
  const out: string[] = [];
  const io: CommandIo = { out: (line) => out.push(line), note: () => undefined, stderr: { write: () => true }, cwd };
  try {
    await command.run(args, io);
  } catch (err) {
    throw new Error(`edgefleet ${command.name} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  return out;
}

const ROLES = ['root', 'models', 'rollout'] as const;

/** `keys generate` for each role, then `trust init` with their public keys. */
export async function createKeysAndTrust(paths: FleetPaths, cwd: string): Promise<void> {
  for (const role of ROLES) await run(keysGenerate, ['--out', paths.keysDir, '--name', role], cwd);
  const pub = (role: string): string => join(paths.keysDir, `${role}.pub`);
  await run(trustInit, ['--root', pub('root'), '--models', pub('models'), '--rollout', pub('rollout'), '--out', paths.trust, '--expires', '1y'], cwd);
}

export interface PublishOptions {
  brokerUrl: string;
  modelFile: string;
  name: string;
  version: number;
  deviceId: string;
}

/** `model publish` then `deploy --device`; returns the two result lines the commands print. */
export async function publishAndDeploy(paths: FleetPaths, opts: PublishOptions, cwd: string): Promise<{ published: string; deployed: string }> {
  const broker = ['--broker', opts.brokerUrl, '--mqtt-version', '4'];
  const manifest = join(paths.manifestsDir, `${opts.name}-${opts.version}.manifest.json`);
  const published = await run(
    modelPublish,
    [opts.modelFile, '--name', opts.name, '--version', String(opts.version), '--quantization', 'int8', '--signing-key', join(paths.keysDir, 'models.key'),
      '--out-manifest', manifest, '--trust', paths.trust, '--wait-ms', '200', ...broker],
    cwd,
  );
  const deployed = await run(
    deploy,
    ['--device', opts.deviceId, `${opts.name}:${opts.version}`, '--manifests', manifest, '--signing-key', join(paths.keysDir, 'rollout.key'),
      '--trust', paths.trust, '--wait-ms', '200', ...broker],
    cwd,
  );
  return { published: published.join(' '), deployed: deployed.join(' ') };
}
