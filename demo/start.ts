/**
 * `npm start`: a working agent on an embedded default model, no setup by hand.
 * Writes a generated MNIST-shaped model into a local models.dir, starts the
 * agent on 127.0.0.1:8501, sends one real handwritten digit and prints a
 * ready-to-paste curl. Ctrl-C stops it cleanly.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { parseConfig } from '../agent/config/load.js';
import { createLogger } from '../agent/log.js';
import { createAgent } from '../agent/main.js';
import { mlpModel, writeModelTree } from '../models/onnx/zoo.js';

interface MnistDigit {
  get(which?: number): number[];
}

async function main(): Promise<void> {
  const home = resolve(process.env.EDGEFLEET_DEMO_DIR ?? '.edgefleet-demo');
  const modelsDir = join(home, 'models');
  await mkdir(modelsDir, { recursive: true });
  await writeModelTree(modelsDir, 'mnist', 1, mlpModel());

  const config = parseConfig({ deviceId: 'demo-device', stateDir: join(home, 'state'), models: { dir: modelsDir, settleMs: 0 }, log: { level: 'warn' } }, { env: process.env });
  const agent = createAgent(config, createLogger({ level: config.log.level, deviceId: config.deviceId }));
  await agent.start();
  const url = `http://${config.http.host}:${agent.httpAddress?.port ?? config.http.port}`;

  const mnist = createRequire(import.meta.url)('mnist') as MnistDigit[];
  const pixels = (mnist[7] as MnistDigit).get(0);
  const request = { instances: [pixels] };
  const requestFile = join(home, 'digit-7.json');
  await writeFile(requestFile, JSON.stringify(request));
  const res = await fetch(`${url}/v1/models/mnist:predict`, { method: 'POST', body: JSON.stringify(request) });
  const answer = (await res.json()) as { predictions?: number[][] };
  const probs = answer.predictions?.[0] ?? [];

  process.stdout.write(
    [
      '',
      `edgefleet agent serving on ${url}  (execution providers: ${agent.providers.available.join(', ')})`,
      '',
      'Predict a real handwritten 7 from the MNIST test digits:',
      `  curl -s -X POST ${url}/v1/models/mnist:predict -d @${requestFile}`,
      '',
      `Answer: class ${probs.indexOf(Math.max(...probs))}, probabilities ${JSON.stringify(probs.map((p) => Math.round(p * 1000) / 1000))}`,
      '(the embedded default is a generated, untrained MNIST-shaped network: the answer shows the path works, not accuracy)',
      '',
      `Also: curl -s ${url}/v2/models/mnist   ·   curl -s ${url}/metrics`,
      'Ctrl-C stops the agent.',
      '',
    ].join('\n'),
  );

  const stop = (): void => {
    void agent.stop().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
