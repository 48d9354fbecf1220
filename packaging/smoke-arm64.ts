/**
 * `npm run test:arm64`: the arm64 release package on a bare Debian bookworm arm64 root
 * under qemu-user, as a Raspberry Pi user would install it (docs/device-guide.md):
 *
 *  1. builds the arm64 package (npm run package; cached parts are reused);
 *  2. copies the cached board root (packaging/arm64-root.sh board: no compiler, no
 *     Node.js, no npm) and, with no network, unpacks the tarball and runs its
 *     provision.sh --source, serving the MNIST MLP and its int8 copy from --models-dir;
 *  3. starts the agent as the edgefleet user and asks it, over TF Serving REST and the
 *     Open Inference Protocol, for the same digits as an x86-64 agent from this checkout:
 *     the argmax must be equal, the largest absolute difference is printed;
 *  4. reads its SQLite state database with the packaged better-sqlite3, and checks the
 *     execution-provider report against what docs/execution-providers.md quotes;
 *  5. upgrades with dpkg -i of the .deb (no network), restarts, and checks that config,
 *     key, state database and models were kept and the answers did not change.
 *
 * Needs root, debootstrap and qemu-user-static (.ci/run installs them). Prints how long
 * each step took. Exit status 0 when every check passed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { buildMnistModels } from '../models/mnist/build.js';
import { loadMnist } from '../models/mnist/data.js';
import { getJson, postJson, waitFor } from '../test/helpers/agent.js';
import { makeFleetKeys, writeTrust } from '../test/helpers/fleet.js';
import { freePort, spawnAgent } from '../test/helpers/child.js';
import { megabytes, buildPackage } from './package.js';
import { cacheDir, REPO, sh } from './parts.js';
import { compareAnswers, providerReportFrom, type Answers, type Comparison } from './smoke-checks.js';

const ROOT_SCRIPT = join(REPO, 'packaging', 'arm64-root.sh');
/** The served models: the MNIST MLP (fp32) and its int8 copy (models/mnist). */
const MODELS = { mlp: 'fp32', mnist_int8: 'int8' } as const;
const DIGITS = 32;
/** The unit's User=/Group=; setpriv execs (runuser would stay as a parent and turn SIGTERM into exit status 143). */
const AS_EDGEFLEET = ['setpriv', '--reuid=edgefleet', '--regid=edgefleet', '--init-groups'];
/** The agent under emulation loads and warms up models slowly. */
const READY_MS = 300_000;

const started = Date.now();
let stepAt = started;
function step(name: string): void {
  const now = Date.now();
  console.log(`--- ${name} (${((now - stepAt) / 1000).toFixed(0)} s since the last step, ${((now - started) / 1000).toFixed(0)} s in all)`);
  stepAt = now;
}

function inRoot(root: string, args: readonly string[], network = false): string {
  return sh('bash', [ROOT_SCRIPT, 'run', ...(network ? [] : ['--no-network']), root, ...args]);
}

const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

interface BoardAgent {
  proc: ChildProcess;
  url: string;
  output: () => string;
}

/** Starts the installed agent in the root as its unit would: user edgefleet, /etc/edgefleet/agent.json. */
async function startBoardAgent(root: string, port: number): Promise<BoardAgent> {
  const proc = spawn('bash', [ROOT_SCRIPT, 'run', root, ...AS_EDGEFLEET, '/opt/edgefleet/bin/edgefleet-agent', '--config', '/etc/edgefleet/agent.json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const url = `http://127.0.0.1:${port}`;
  await waitFor(async () => {
    if (proc.exitCode !== null) throw new Error(`the arm64 agent exited (${proc.exitCode}):\n${out}`);
    const models = await Promise.all(Object.keys(MODELS).map((m) => fetch(`${url}/v2/models/${m}/ready`).then((r) => r.ok, () => false)));
    return models.every(Boolean);
  }, READY_MS, `the arm64 agent to serve ${Object.keys(MODELS).join(' and ')}:\n${out}`);
  return { proc, url, output: () => out };
}

async function stopAgent(proc: ChildProcess): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  proc.kill('SIGTERM');
  return exited;
}

/** Each model's outputs for the same digits over both HTTP APIs, as rows of scores. */
async function ask(url: string, images: Float32Array[]): Promise<Answers> {
  const answers: Answers = {};
  for (const model of Object.keys(MODELS)) {
    const meta = await getJson(`${url}/v2/models/${model}`);
    const input = meta.json.inputs?.[0] as { name: string } | undefined;
    if (meta.status !== 200 || !input) throw new Error(`${model}: metadata ${meta.status} ${JSON.stringify(meta.json)}`);
    const tf = await postJson(`${url}/v1/models/${model}:predict`, { instances: images.map((i) => Array.from(i)) });
    if (tf.status !== 200) throw new Error(`${model}: TF Serving predict ${tf.status} ${JSON.stringify(tf.json)}`);
    answers[`${model} tfs`] = tf.json.predictions as number[][];
    const oip = await postJson(`${url}/v2/models/${model}/infer`, {
      inputs: [{ name: input.name, datatype: 'FP32', shape: [images.length, images[0]!.length], data: images.flatMap((i) => Array.from(i)) }],
    });
    if (oip.status !== 200) throw new Error(`${model}: OIP infer ${oip.status} ${JSON.stringify(oip.json)}`);
    const out = oip.json.outputs[0] as { data: number[]; shape: number[] };
    const width = out.shape[1]!;
    answers[`${model} oip`] = images.map((_, r) => out.data.slice(r * width, (r + 1) * width));
  }
  return answers;
}

/** The state database, read by the packaged Node.js and better-sqlite3 inside the root. */
function readStateDb(root: string): { journal: string; integrity: string; tables: string[] } {
  const script = `const D=require('/opt/edgefleet/node_modules/better-sqlite3');const db=new D('/var/lib/edgefleet/agent.db',{readonly:true});
console.log(JSON.stringify({journal:db.pragma('journal_mode',{simple:true}),integrity:db.pragma('integrity_check',{simple:true}),tables:db.prepare("select name from sqlite_master where type='table' order by name").all().map((r)=>r.name)}))`;
  return JSON.parse(inRoot(root, [...AS_EDGEFLEET, '/opt/edgefleet/node/bin/node', '-e', script]).trim().split('\n').pop() ?? '{}');
}

/** Never rm -rf through a mounted /dev or /proc: the host's would go with it. */
function removeRoot(work: string, root: string): void {
  for (const mount of ['dev', 'proc']) {
    const path = join(root, mount);
    if (sh('sh', ['-c', `mountpoint -q "$1" && echo mounted || true`, 'sh', path]).trim() === 'mounted') sh('umount', ['-l', path]);
  }
  rmSync(work, { recursive: true, force: true });
}

function printComparison(label: string, c: Comparison): void {
  for (const row of c.rows) console.log(`${label}: ${row.name}: ${row.count} digits, argmax equal ${row.argmaxEqual}/${row.count}, max abs diff ${row.maxAbsDiff.toExponential(2)}`);
  if (!c.ok) throw new Error(`${label}: the arm64 answers differ from x86-64 (above)`);
}

/** --no-build: the files `npm run package -- --arch arm64` left in release/. */
function builtPackage(): { tarball: string; deb?: string } {
  const { version } = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string };
  const files = { tarball: join(REPO, 'release', `edgefleet-agent-${version}-linux-arm64.tar.gz`), deb: join(REPO, 'release', `edgefleet-agent_${version}_arm64.deb`) };
  for (const file of Object.values(files)) if (!existsSync(file)) throw new Error(`--no-build: ${file} is missing; run npm run package -- --arch arm64`);
  return files;
}

type ModelFiles = Record<keyof typeof MODELS, string>;
const KEPT = ['etc/edgefleet/agent.json', 'etc/edgefleet/device.key', 'srv/models/mlp/1/model.onnx'];

function placeModels(dir: string, files: ModelFiles): void {
  for (const [name, file] of Object.entries(files)) {
    mkdirSync(join(dir, name, '1'), { recursive: true });
    copyFileSync(file, join(dir, name, '1', 'model.onnx'));
  }
}

/** The copied board root, checked bare, with the models, the package files and a trust root in it. */
async function prepareRoot(board: string, root: string, pkg: { tarball: string; deb?: string }, models: ModelFiles): Promise<void> {
  sh('cp', ['-a', board, root]);
  for (const tool of ['gcc', 'cc', 'make', 'npm', 'node']) {
    if (existsSync(join(root, 'usr', 'bin', tool))) throw new Error(`the board root has /usr/bin/${tool}: it must be bare`);
  }
  placeModels(join(root, 'srv', 'models'), models);
  for (const file of [pkg.tarball, pkg.deb!]) copyFileSync(file, join(root, 'tmp', basename(file)));
  // A broker nobody answers on: the agent opens its state database only with mqtt set.
  await writeTrust(join(root, 'tmp', 'trust.json'), makeFleetKeys());
}

/** What a Pi user types (docs/device-guide.md section 3), with no network. */
async function provisionFromTarball(root: string, tarball: string, port: number): Promise<void> {
  const tar = `/tmp/${basename(tarball)}`;
  const args = `--device-id arm64-smoke --models-dir /srv/models --http-port ${port} --execution-providers tensorrt,cuda,xnnpack,cpu --broker mqtt://127.0.0.1:${await freePort()} --trust /tmp/trust.json`;
  const out = inRoot(root, ['bash', '-c', `cd /tmp && tar -xzf ${tar} && ./edgefleet-agent-*/provisioning/provision.sh ${args} --source ${tar}`]);
  console.log(out.trim().split('\n').map((l) => `  ${l}`).join('\n'));
}

/** The same digits asked of an x86-64 agent run from this checkout. */
async function x64Answers(models: ModelFiles, images: Float32Array[]): Promise<Answers> {
  const dir = mkdtempSync(join(tmpdir(), 'edgefleet-x64-reference-'));
  placeModels(join(dir, 'models'), models);
  const reference = await spawnAgent(dir, { models: { dir: join(dir, 'models') } });
  try {
    await waitFor(async () => (await Promise.all(Object.keys(MODELS).map((m) => fetch(`${reference.url}/v2/models/${m}/ready`).then((r) => r.ok)))).every(Boolean), 60_000, 'the x86-64 agent');
    return await ask(reference.url, images);
  } finally {
    reference.proc.kill('SIGTERM');
    await reference.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

function checkStateAndProviders(root: string, output: string): void {
  const db = readStateDb(root);
  console.log(`state database: journal ${db.journal}, integrity ${db.integrity}, tables ${db.tables.join(', ')}`);
  if (db.journal !== 'wal' || db.integrity !== 'ok' || !db.tables.includes('kv')) throw new Error("the state database is not a working WAL database with the agent's tables");
  const report = providerReportFrom(output, readFileSync(join(REPO, 'docs', 'execution-providers.md'), 'utf8'), 'arm64');
  console.log(`execution providers: ${JSON.stringify(report)}`);
}

/** dpkg -i of the .deb over the provisioned agent (stopped), with no network: nothing of the board's may change. */
function upgradeWithDeb(root: string, deb: string): void {
  const before = KEPT.map((f) => sha(join(root, f)));
  const dbInode = statSync(join(root, 'var/lib/edgefleet/agent.db')).ino;
  console.log(inRoot(root, ['dpkg', '-i', `/tmp/${basename(deb)}`]).trim().split('\n').map((l) => `  ${l}`).join('\n'));
  if (KEPT.map((f) => sha(join(root, f))).join() !== before.join()) throw new Error('dpkg -i changed the config, the device key or a served model');
  if (statSync(join(root, 'var/lib/edgefleet/agent.db')).ino !== dbInode) throw new Error('dpkg -i replaced the state database');
}

async function main(): Promise<void> {
  const pkg = process.argv.includes('--no-build') ? builtPackage() : buildPackage({ arch: 'arm64', outDir: join(REPO, 'release'), deb: true });
  console.log(`arm64 package: ${megabytes(statSync(pkg.tarball).size)} tar.gz, ${megabytes(statSync(pkg.deb!).size)} .deb`);
  step('package built');
  const board = sh('bash', [ROOT_SCRIPT, 'board'], { stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  step('board root ready');
  const built = await buildMnistModels({ outDir: join(cacheDir(), 'mnist-models'), epochs: 2, seed: 7 });
  const models: ModelFiles = { mlp: built.fp32.path, mnist_int8: built.int8.path };
  const { test } = loadMnist();
  const images = Array.from({ length: DIGITS }, (_, i) => test.images.slice(i * 784, (i + 1) * 784));

  const work = mkdtempSync(join(tmpdir(), 'edgefleet-arm64-smoke-'));
  const root = join(work, 'root');
  let agent: BoardAgent | undefined;
  try {
    await prepareRoot(board, root, pkg, models);
    step('root copied, models in /srv/models');
    const port = await freePort();
    await provisionFromTarball(root, pkg.tarball, port);
    step('provisioned from the tarball with no network');
    agent = await startBoardAgent(root, port);
    step('arm64 agent serving');
    const armAnswers = await ask(agent.url, images);
    step(`arm64 answers for ${DIGITS} digits`);
    printComparison('arm64 vs x86-64', compareAnswers(armAnswers, await x64Answers(models, images)));
    step('compared with x86-64');
    checkStateAndProviders(root, agent.output());
    step('state database and provider report checked');
    const code = await stopAgent(agent.proc);
    agent = undefined;
    if (code !== 0) throw new Error(`the arm64 agent exited ${code} on SIGTERM, not 0`);
    upgradeWithDeb(root, pkg.deb!);
    step('upgraded with dpkg -i, no network: config, key, state and models kept');
    agent = await startBoardAgent(root, port);
    printComparison('after the upgrade', compareAnswers(await ask(agent.url, images), armAnswers));
    step('upgraded agent gives the same answers');
  } finally {
    if (agent) await stopAgent(agent.proc);
    removeRoot(work, root);
  }
  console.log(`arm64 smoke test passed in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

main().catch((err: unknown) => {
  console.error(`test:arm64: ${(err as Error).message}`);
  process.exit(1);
});
