import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectAsync } from 'mqtt';
import type { MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { clearArtifactProgress } from '../agent/rollout/block-progress.js';
import { BlockPullError, BlockPuller } from '../agent/rollout/block-puller.js';
import type { ArtifactBlocks, BlockPullerOptions, MinimalMqtt } from '../agent/rollout/block-puller.js';
import { AgentDatabase } from '../agent/store/database.js';
import type { EmbeddedBroker } from '../demo/broker.js';
import { startEmbeddedBroker } from '../demo/broker.js';
import { mosquittoSkipReason, startMosquitto } from './helpers/mosquitto.js';
import type { Mosquitto } from './helpers/mosquitto.js';

const skip = mosquittoSkipReason();
if (skip) console.warn(`block-puller tests skipped: ${skip}`);

const KiB = 1024;
const logger = pino({ level: 'silent' });
const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

function makeArtifact(size: number, blockSize: number): { data: Buffer; artifact: ArtifactBlocks } {
  const data = randomBytes(size);
  const blockSha256: string[] = [];
  for (let off = 0; off < size; off += blockSize) blockSha256.push(sha256(data.subarray(off, off + blockSize)));
  return { data, artifact: { sha256: sha256(data), size, blockSize, blockSha256 } };
}

type Listener = (...args: never[]) => void;

/** Wraps a real mqtt.js client to record what the puller asks for and receives. */
class SpyClient implements MinimalMqtt {
  readonly subscribed: string[] = [];
  /** Topics per SUBSCRIBE packet, in order. */
  readonly subscribeCalls: string[][] = [];
  readonly acked = new Set<string>();
  readonly messages: { topic: string; length: number }[] = [];
  private readonly active = new Set<string>();
  maxActive = 0;

  constructor(readonly inner: MqttClient) {
    inner.on('message', (topic, payload) => this.messages.push({ topic, length: payload.length }));
  }
  get connected(): boolean {
    return this.inner.connected;
  }
  subscribeAsync(topics: string[], opts: { qos: 0 | 1 }): Promise<unknown> {
    this.subscribeCalls.push([...topics]);
    for (const topic of topics) {
      this.subscribed.push(topic);
      this.active.add(topic);
    }
    this.maxActive = Math.max(this.maxActive, this.active.size);
    return this.inner.subscribeAsync(topics, opts).then((granted) => {
      for (const topic of topics) this.acked.add(topic);
      return granted;
    });
  }
  unsubscribeAsync(topics: string[]): Promise<unknown> {
    for (const topic of topics) {
      this.active.delete(topic);
      this.acked.delete(topic);
    }
    return this.inner.unsubscribeAsync(topics);
  }
  on(event: 'message' | 'connect', listener: Listener): this {
    this.inner.on(event, listener as never);
    return this;
  }
  off(event: 'message' | 'connect', listener: Listener): this {
    this.inner.off(event, listener as never);
    return this;
  }
  /** Block indices subscribed, in order. */
  indices(): number[] {
    return this.subscribed.map((t) => Number(t.slice(t.lastIndexOf('/') + 1)));
  }
}

describe.skipIf(skip)(`BlockPuller against Mosquitto${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let broker: Mosquitto;
  let publisher: MqttClient;
  let client: MqttClient;
  let dir: string;
  let db: AgentDatabase;
  let root: string;

  beforeAll(async () => {
    broker = await startMosquitto();
    publisher = await connectAsync(broker.url, { reconnectPeriod: 100 });
  });
  afterAll(async () => {
    await publisher?.endAsync(true);
    await broker?.stop();
  });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-puller-'));
    db = AgentDatabase.open(join(dir, 'agent.db'));
    root = `t${randomBytes(4).toString('hex')}`;
    client = await connectAsync(broker.url, { reconnectPeriod: 100 });
  });
  afterEach(async () => {
    await client.endAsync(true);
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  const topicOf = (sha: string, i: number): string => `${root}/artifacts/${sha}/blocks/${i}`;

  async function publishBlocks(
    data: Buffer,
    artifact: ArtifactBlocks,
    options: { skip?: number[]; topicSha?: string } = {},
  ): Promise<void> {
    const jobs: Promise<unknown>[] = [];
    artifact.blockSha256.forEach((_, i) => {
      if (options.skip?.includes(i)) return;
      const block = data.subarray(i * artifact.blockSize, (i + 1) * artifact.blockSize);
      jobs.push(publisher.publishAsync(topicOf(options.topicSha ?? artifact.sha256, i), block, { qos: 1, retain: true }));
    });
    await Promise.all(jobs);
  }

  function puller(artifact: ArtifactBlocks, extra: Partial<BlockPullerOptions> = {}): BlockPuller {
    return new BlockPuller({
      client, topicRoot: root, artifact, stagingFile: join(dir, 'staging', `${artifact.sha256}.part`), db, logger, ...extra,
    });
  }

  const staged = (artifact: ArtifactBlocks): Promise<Buffer> => readFile(join(dir, 'staging', `${artifact.sha256}.part`));
  const rows = (sha: string): number =>
    (db.db.prepare('SELECT count(*) AS n FROM artifact_blocks WHERE sha256 = ?').get(sha) as { n: number }).n;

  async function pullError(p: BlockPuller): Promise<BlockPullError> {
    const err: unknown = await p.pull().then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(BlockPullError);
    return err as BlockPullError;
  }

  it('pulls every block, verifies the file and records progress', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    await publishBlocks(data, artifact);
    const progress: number[] = [];
    const p = puller(artifact, { onProgress: (done, total) => progress.push(done / total) });
    await p.pull();
    expect((await staged(artifact)).equals(data)).toBe(true);
    expect(p.blocksRequested).toBe(19);
    expect(p.bytesReceived).toBe(300 * KiB);
    expect(rows(artifact.sha256)).toBe(19);
    expect(progress.at(-1)).toBe(1);

    // Already complete: re-verifies the staging file without asking for anything.
    const again = puller(artifact);
    await again.pull();
    expect(again.blocksRequested).toBe(0);
  });

  it('never has more than `window` subscriptions outstanding', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    await publishBlocks(data, artifact);
    const spy = new SpyClient(client);
    await puller(artifact, { client: spy, window: 3 }).pull();
    expect(spy.maxActive).toBe(3);
    expect(spy.indices()).toEqual([...Array(19).keys()]);
    // The first window goes out as one SUBSCRIBE packet with three topics.
    expect(spy.subscribeCalls[0]).toHaveLength(3);
  });

  it('asks for a tampered block three more times, then rejects with BLOCK_HASH', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    const tampered = Buffer.from(data);
    tampered[3 * 16 * KiB + 7]! ^= 0xff;
    await publishBlocks(tampered, artifact);
    const spy = new SpyClient(client);
    const started = Date.now();
    const err = await pullError(puller(artifact, { client: spy }));
    expect(err.code).toBe('BLOCK_HASH');
    expect(err.block).toBe(3);
    expect(err.message).toMatch(/block 3 of 19 failed its sha256 check 4 times/);
    expect(spy.indices().filter((i) => i === 3)).toHaveLength(4);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('resumes: a new puller asks only for the blocks not yet recorded', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    await publishBlocks(data, artifact);
    const first = puller(artifact, { window: 4 });
    // Registered before the puller's own listener, so the 7th block is never taken.
    let seen = 0;
    client.on('message', () => {
      if (++seen === 7) first.abort();
    });
    expect((await pullError(first)).code).toBe('ABORTED');
    const recorded = new Set(
      (db.db.prepare('SELECT idx FROM artifact_blocks WHERE sha256 = ?').all(artifact.sha256) as { idx: number }[]).map((r) => r.idx),
    );
    // Blocks taken before the abort were written, fsynced and recorded on the way out.
    expect(recorded.size).toBe(6);

    const spy = new SpyClient(client);
    const second = puller(artifact, { client: spy, window: 4 });
    await second.pull();
    const missing = [...Array(19).keys()].filter((i) => !recorded.has(i));
    expect(spy.indices()).toEqual(missing);
    expect(second.blocksRequested).toBe(19 - recorded.size);
    expect((await staged(artifact)).equals(data)).toBe(true);
  });

  it('re-pulls everything when the staging file is gone', async () => {
    const { data, artifact } = makeArtifact(40 * KiB, 16 * KiB);
    await publishBlocks(data, artifact);
    await puller(artifact).pull();
    await rm(join(dir, 'staging'), { recursive: true });
    const p = puller(artifact);
    await p.pull();
    expect(p.blocksRequested).toBe(3);
    expect((await staged(artifact)).equals(data)).toBe(true);
  });

  it('rejects with BLOCK_MISSING when a block never arrives, after re-asking with backoff', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    // Published, then retired by the publisher: the retained message is gone.
    await publishBlocks(data, artifact);
    await publisher.publishAsync(topicOf(artifact.sha256, 5), Buffer.alloc(0), { qos: 1, retain: true });
    const spy = new SpyClient(client);
    const err = await pullError(puller(artifact, { client: spy, blockTimeoutMs: 50, giveUpAfterMs: 600 }));
    expect(err.code).toBe('BLOCK_MISSING');
    expect(err.block).toBe(5);
    expect(err.message).toMatch(/^artifact block 5 of 19 never arrived .*; is the artifact published\?$/);
    // Asked at 0, then re-asked at ~50, ~150, ~350 ms (doubling).
    expect(spy.indices().filter((i) => i === 5).length).toBeGreaterThanOrEqual(4);
    expect(rows(artifact.sha256)).toBe(18);
  });

  it('treats a zero-length block as missing, not as a hash failure', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    await publishBlocks(data, artifact, { skip: [2] });
    const spy = new SpyClient(client);
    const p = puller(artifact, { client: spy, blockTimeoutMs: 30_000 });
    const pulling = p.pull();
    const topic = topicOf(artifact.sha256, 2);
    await vi.waitFor(() => expect(rows(artifact.sha256) === 18 && spy.acked.has(topic)).toBe(true));
    for (let n = 0; n < 5; n++) await publisher.publishAsync(topic, Buffer.alloc(0), { qos: 1, retain: true });
    await vi.waitFor(() => expect(spy.messages.filter((m) => m.topic === topic && m.length === 0)).toHaveLength(5));
    await publisher.publishAsync(topic, data.subarray(2 * 16 * KiB, 3 * 16 * KiB), { qos: 1, retain: true });
    await pulling;
    expect(p.blocksRequested).toBe(19);
    expect((await staged(artifact)).equals(data)).toBe(true);
  });

  it('rejects with FILE_HASH when every block matches but the whole does not, and forgets the progress', async () => {
    const { data, artifact } = makeArtifact(100 * KiB, 16 * KiB);
    const wrong = { ...artifact, sha256: sha256(randomBytes(32)) };
    await publishBlocks(data, artifact, { topicSha: wrong.sha256 });
    const err = await pullError(puller(wrong));
    expect(err.code).toBe('FILE_HASH');
    expect(rows(wrong.sha256)).toBe(0);
  });

  it('rejects with FILE_HASH on a resumed pull too (the file is read back to check it)', async () => {
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    const wrong = { ...artifact, sha256: sha256(randomBytes(32)) };
    await publishBlocks(data, artifact, { topicSha: wrong.sha256 });
    const first = puller(wrong, { window: 2 });
    let seen = 0;
    client.on('message', () => {
      if (++seen === 5) first.abort();
    });
    expect((await pullError(first)).code).toBe('ABORTED');
    expect(rows(wrong.sha256)).toBeGreaterThan(0);
    const err = await pullError(puller(wrong));
    expect(err.code).toBe('FILE_HASH');
    expect(err.message).toContain(`${100 * 3 * KiB} bytes with sha256 ${artifact.sha256}`);
    expect(rows(wrong.sha256)).toBe(0);
  });

  it('verifies the whole file when its first block comes last, after more than 8 MiB of later blocks', async () => {
    const { data, artifact } = makeArtifact(9 * 1024 * KiB, 64 * KiB);
    await publishBlocks(data, artifact, { skip: [0] });
    const p = puller(artifact, { window: 16, blockTimeoutMs: 30_000 });
    const pulling = p.pull();
    await vi.waitFor(() => expect(rows(artifact.sha256)).toBe(artifact.blockSha256.length - 1), { timeout: 10_000 });
    await publishBlocks(data, artifact, { skip: artifact.blockSha256.map((_, i) => i).filter((i) => i !== 0) });
    await pulling;
    expect((await staged(artifact)).equals(data)).toBe(true);
  });

  it('clearArtifactProgress forgets one artifact only', async () => {
    const a = makeArtifact(20 * KiB, 16 * KiB);
    const b = makeArtifact(20 * KiB, 16 * KiB);
    await publishBlocks(a.data, a.artifact);
    await publishBlocks(b.data, b.artifact);
    await puller(a.artifact).pull();
    await puller(b.artifact).pull();
    clearArtifactProgress(db, a.artifact.sha256);
    expect(rows(a.artifact.sha256)).toBe(0);
    expect(rows(b.artifact.sha256)).toBe(2);
  });

  it('survives a broker restart mid-pull and re-subscribes only outstanding blocks', async () => {
    const { data, artifact } = makeArtifact(2048 * KiB, 16 * KiB);
    await publishBlocks(data, artifact);
    let received = 0;
    let restarting: Promise<void> | undefined;
    let receivedAtReconnect: number | undefined;
    // On reception, not on durable progress: reception runs ahead of fsync.
    client.on('message', () => {
      if (++received === 10) restarting = broker.restart({ downMs: 300 });
    });
    client.on('connect', () => {
      receivedAtReconnect ??= received;
    });
    const spy = new SpyClient(client);
    const p = puller(artifact, { client: spy, window: 4, blockTimeoutMs: 2_000, giveUpAfterMs: 20_000 });
    await p.pull();
    await restarting;
    expect(receivedAtReconnect).toBeDefined();
    expect(receivedAtReconnect).toBeLessThan(128);
    expect((await staged(artifact)).equals(data)).toBe(true);
    // 128 first asks plus at most one window re-subscribed per reconnect.
    expect(p.blocksRequested).toBeGreaterThan(128);
    expect(p.blocksRequested).toBeLessThanOrEqual(128 + 4);
    expect(spy.maxActive).toBeLessThanOrEqual(4);
  });
});

describe('BlockPuller against aedes (MQTT 3.1.1 only, the broker of `npm start`)', () => {
  let broker: EmbeddedBroker;
  let publisher: MqttClient;
  let client: MqttClient;
  let dir: string;
  let db: AgentDatabase;

  beforeAll(async () => {
    broker = await startEmbeddedBroker({ port: 0 });
    publisher = await connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 100 });
    client = await connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 100 });
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-puller-aedes-'));
    db = AgentDatabase.open(join(dir, 'agent.db'));
  });
  afterAll(async () => {
    await client?.endAsync(true);
    await publisher?.endAsync(true);
    db?.close();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('pulls every block a window at a time, and gets a late block by re-asking', async () => {
    const root = `t${randomBytes(4).toString('hex')}`;
    const { data, artifact } = makeArtifact(300 * KiB, 16 * KiB);
    const publish = (i: number): Promise<unknown> =>
      publisher.publishAsync(`${root}/artifacts/${artifact.sha256}/blocks/${i}`, data.subarray(i * artifact.blockSize, (i + 1) * artifact.blockSize), { qos: 1, retain: true });
    // Block 7 is published only after the puller has asked for it once and timed out.
    await Promise.all(artifact.blockSha256.map((_, i) => i).filter((i) => i !== 7).map(publish));
    const spy = new SpyClient(client);
    const p = new BlockPuller({ client: spy, topicRoot: root, artifact, stagingFile: join(dir, 'staging', `${artifact.sha256}.part`), db, logger, window: 3, blockTimeoutMs: 100 });
    const pulling = p.pull();
    await vi.waitFor(() => expect(spy.indices().filter((i) => i === 7).length).toBeGreaterThanOrEqual(2), { timeout: 5_000 });
    await publish(7);
    await pulling;
    expect((await readFile(join(dir, 'staging', `${artifact.sha256}.part`))).equals(data)).toBe(true);
    expect(spy.maxActive).toBeLessThanOrEqual(3);
  });
});
