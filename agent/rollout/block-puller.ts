import { webcrypto } from 'node:crypto';
import type { Logger } from 'pino';
import { blockCount } from '../../protocol/manifest.js';
import type { AgentDatabase } from '../store/database.js';
import { isNoSpace } from '../store/no-space.js';
import { BlockProgress } from './block-progress.js';
import { RolloutError } from './errors.js';
import { InOrderHash, readBackSha256 } from './file-hash.js';
import { StagingFile } from './staging-file.js';
import { SubscriptionBatch } from './subscription-batch.js';

/**
 * Pulls one artifact's blocks from the broker (docs/protocol.md section 5): retained
 * QoS 1 messages on `{root}/artifacts/{sha256}/blocks/{i}`, asked for by
 * subscribing a window at a time. The window is what is in flight on the
 * network: a block that arrives frees its place at once, and its check and
 * write run behind it (bounded by 2 windows of bytes in memory).
 *
 * Progress is durable (block-progress.ts): a block is recorded only after its
 * bytes are fsynced in the staging file (staging-file.ts), so a restart asks
 * only for what is missing and never trusts half-written bytes. The whole
 * file's hash is fed as blocks come (file-hash.ts).
 */

type MessageListener = (topic: string, payload: Buffer) => void;

/** The part of mqtt.js's MqttClient the puller uses; a real client fits it. */
export interface MinimalMqtt {
  readonly connected: boolean;
  subscribeAsync(topics: string[], opts: { qos: 0 | 1 }): Promise<unknown>;
  unsubscribeAsync(topics: string[]): Promise<unknown>;
  on(event: 'message', listener: MessageListener): unknown;
  on(event: 'connect', listener: () => void): unknown;
  off(event: 'message', listener: MessageListener): unknown;
  off(event: 'connect', listener: () => void): unknown;
}

/** The manifest's `artifact` (protocol/manifest.ts) fits this. */
export interface ArtifactBlocks {
  sha256: string;
  size: number;
  blockSize: number;
  blockSha256: readonly string[];
}

/** The puller's share of the rollout's codes; errors.ts says how each is reported. */
export type BlockPullErrorCode = 'BLOCK_HASH' | 'BLOCK_MISSING' | 'FILE_HASH' | 'ABORTED';

export class BlockPullError extends RolloutError<BlockPullErrorCode> {
  /** The block concerned, for BLOCK_HASH and BLOCK_MISSING. */
  readonly block: number | undefined;
  constructor(code: BlockPullErrorCode, message: string, block?: number) {
    super(code, message);
    this.name = 'BlockPullError';
    this.block = block;
  }
}

export interface BlockPullerOptions {
  client: MinimalMqtt;
  topicRoot: string;
  artifact: ArtifactBlocks;
  stagingFile: string;
  db: AgentDatabase;
  /** Blocks subscribed at once. */
  window?: number;
  /** First wait for a block before asking again; doubles per retry up to maxRetryDelayMs. */
  blockTimeoutMs?: number;
  maxRetryDelayMs?: number;
  /** Re-asks after a block fails its hash check before giving up with BLOCK_HASH. */
  maxBlockRetries?: number;
  /** Time without any verified block before giving up with BLOCK_MISSING. */
  giveUpAfterMs?: number;
  logger: Logger;
  /** Durable progress: blocks recorded done so far, of total. */
  onProgress?: (done: number, total: number) => void;
}

interface Slot {
  timeouts: number;
  timer: NodeJS.Timeout | undefined;
}

export class BlockPuller {
  /** Subscriptions made (first asks, re-asks, re-subscriptions after reconnect). */
  blocksRequested = 0;
  /** Payload bytes received on this artifact's block topics, duplicates included. */
  bytesReceived = 0;

  private readonly client: MinimalMqtt;
  private readonly artifact: ArtifactBlocks;
  private readonly expected: readonly string[];
  private readonly total: number;
  private readonly prefix: string;
  private readonly window: number;
  private readonly blockTimeoutMs: number;
  private readonly maxRetryDelayMs: number;
  private readonly maxBlockRetries: number;
  private readonly giveUpAfterMs: number;
  private readonly log: Logger;
  private readonly requests: SubscriptionBatch;
  private readonly progress: BlockProgress;
  private staging: StagingFile | undefined;
  /** The running whole-file hash (a fresh pull only; a resumed one reads the file back). */
  private fileHash: InOrderHash | undefined;
  /** Missing blocks not yet asked for, in order. */
  private queue: number[] = [];
  private readonly outstanding = new Map<number, Slot>();
  /** Blocks that failed their check so far, by index. */
  private readonly hashFailures = new Map<number, number>();
  /** Blocks being verified and written. */
  private readonly pipeline = new Set<Promise<void>>();
  /** Bytes received and not yet written; the window stops growing past maxBuffered. */
  private buffered = 0;
  private readonly maxBuffered: number;
  private ioFailed = false;
  private stallTimer: NodeJS.Timeout | undefined;
  private started = false;
  private aborted = false;
  private settle: { resolve: () => void; reject: (err: unknown) => void } | undefined;

  constructor(private readonly options: BlockPullerOptions) {
    const { artifact } = options;
    this.total = blockCount(artifact.size, artifact.blockSize);
    if (!(artifact.blockSize > 0) || artifact.blockSha256.length !== this.total) {
      throw new Error(`artifact ${artifact.sha256}: blockSha256 must have ceil(size / blockSize) = ${this.total} entries`);
    }
    this.client = options.client;
    this.artifact = artifact;
    this.expected = artifact.blockSha256.map((h) => h.toLowerCase());
    this.prefix = `${options.topicRoot}/artifacts/${artifact.sha256}/blocks/`;
    this.window = Math.max(1, options.window ?? 8);
    this.blockTimeoutMs = options.blockTimeoutMs ?? 10_000;
    this.maxRetryDelayMs = Math.max(this.blockTimeoutMs, options.maxRetryDelayMs ?? 60_000);
    this.maxBlockRetries = options.maxBlockRetries ?? 3;
    this.giveUpAfterMs = options.giveUpAfterMs ?? 600_000;
    this.log = options.logger.child({ component: 'block-puller', artifact: artifact.sha256 });
    this.maxBuffered = 2 * this.window * artifact.blockSize;
    this.requests = new SubscriptionBatch(this.client, this.log);
    this.progress = new BlockProgress({
      db: options.db,
      sha256: artifact.sha256,
      total: this.total,
      sync: () => this.openStaging().sync(),
      onDurable: (durable) => {
        this.options.onProgress?.(durable, this.total);
        if (durable >= this.total) this.settle?.resolve();
      },
      onError: (err) => this.ioFail(err),
    });
  }

  /** Resolves once the whole staging file is in and matches size and sha256. Call once. */
  async pull(): Promise<void> {
    if (this.started) throw new Error('BlockPuller.pull() may only be called once');
    this.started = true;
    try {
      const { file, kept } = await StagingFile.open(this.options.stagingFile, this.artifact.size);
      this.staging = file;
      if (!kept) this.progress.clear();
      const done = this.progress.load();
      this.queue = [];
      for (let i = 0; i < this.total; i++) if (!done.has(i)) this.queue.push(i);
      if (done.size === 0) this.fileHash = new InOrderHash();
      this.log.info({ blocks: this.total, missing: this.queue.length }, 'pulling artifact blocks');
      this.options.onProgress?.(done.size, this.total);
      if (this.aborted) throw abortedError();
      if (this.queue.length > 0) await this.receiveAll();
      await this.verifyFile();
      this.log.info({ size: this.artifact.size }, 'artifact complete and verified');
    } finally {
      await this.cleanup();
    }
  }

  /** Stops pulling; pull() rejects with ABORTED once progress so far is saved. */
  abort(): void {
    this.aborted = true;
    this.fail(abortedError());
  }

  private openStaging(): StagingFile {
    if (!this.staging) throw new Error('staging file is not open');
    return this.staging;
  }

  private ioFail(err: unknown): void {
    this.ioFailed = true;
    this.progress.halt();
    this.fail(err);
  }

  private receiveAll(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
      this.client.on('message', this.onMessage);
      this.client.on('connect', this.onConnect);
      // Refreshed on every verified block: only a stall this long gives up.
      this.stallTimer = setTimeout(() => this.giveUp(), this.giveUpAfterMs);
      this.fillWindow();
    }).finally(() => this.stopReceiving());
  }

  private fail(err: unknown): void {
    const settle = this.settle;
    this.settle = undefined;
    settle?.reject(err);
  }

  private fillWindow(): void {
    while (this.settle && this.outstanding.size < this.window && this.buffered < this.maxBuffered) {
      const i = this.queue.shift();
      if (i === undefined) return;
      const slot: Slot = { timeouts: 0, timer: undefined };
      this.outstanding.set(i, slot);
      this.ask(i, slot);
    }
  }

  private topic(i: number): string {
    return `${this.prefix}${i}`;
  }

  private ask(i: number, slot: Slot): void {
    this.blocksRequested++;
    // QoS 0 delivery: a block lost with a connection is asked again on connect
    // (see onConnect) rather than resent by the broker from the session, which
    // would resend whole windows the device had already received.
    this.requests.subscribe(this.topic(i));
    this.armTimer(i, slot);
  }

  private unsubscribe(i: number): void {
    this.requests.unsubscribe(this.topic(i));
  }

  /** Unsubscribing first makes the broker deliver the retained block again on subscribe. */
  private reask(i: number, slot: Slot): void {
    this.unsubscribe(i);
    this.ask(i, slot);
  }

  private armTimer(i: number, slot: Slot): void {
    clearTimeout(slot.timer);
    const delay = Math.min(this.blockTimeoutMs * 2 ** slot.timeouts, this.maxRetryDelayMs);
    slot.timer = setTimeout(() => this.onBlockTimeout(i), delay);
  }

  private onBlockTimeout(i: number): void {
    const slot = this.outstanding.get(i);
    if (!slot || !this.settle) return;
    if (!this.client.connected) {
      this.armTimer(i, slot); // the connect handler asks again once the broker is back
      return;
    }
    slot.timeouts++;
    this.log.warn({ block: i, retry: slot.timeouts }, 'artifact block did not arrive; asking again');
    this.reask(i, slot);
  }

  /**
   * Blocks are delivered at QoS 0, so whatever was in flight when the
   * connection dropped is gone: every outstanding block is asked again, and
   * nothing already received comes twice. mqtt.js counts a topic as subscribed
   * from the moment subscribe() is called and silently skips a second call, so
   * the re-ask goes through unsubscribe.
   */
  private readonly onConnect = (): void => {
    this.log.info({ outstanding: this.outstanding.size }, 'reconnected; asking again for outstanding blocks');
    for (const [i, slot] of this.outstanding) this.reask(i, slot);
  };

  private readonly onMessage = (topic: string, payload: Buffer): void => {
    if (!topic.startsWith(this.prefix)) return;
    this.bytesReceived += payload.length;
    const i = Number(topic.slice(this.prefix.length));
    const slot = this.outstanding.get(i);
    if (!slot || !this.settle) return; // a duplicate, or a block already in
    // Zero-length = retired by the publisher: missing, and the timers handle it.
    if (payload.length === 0) {
      this.log.warn({ block: i }, 'artifact block was retired (empty message); waiting for it');
      return;
    }
    clearTimeout(slot.timer);
    this.outstanding.delete(i);
    this.unsubscribe(i);
    if (payload.length !== this.blockLength(i)) {
      this.onBadBlock(i, payload.length);
      return;
    }
    // The next block is asked for now, while this one is checked and written
    // off the event loop: the window is what is in flight on the network.
    this.buffered += payload.length;
    this.track(this.verifyAndStore(i, payload));
    this.fillWindow();
  };

  private blockLength(i: number): number {
    const { size, blockSize } = this.artifact;
    return Math.min(blockSize, size - i * blockSize);
  }

  private track(work: Promise<void>): void {
    this.pipeline.add(work);
    void work.finally(() => this.pipeline.delete(work));
  }

  /**
   * sha256 on libuv's thread pool (the event loop stays free to serve), then
   * the write at the block's offset; a bad block goes back in the queue.
   * Never rejects: an I/O error fails the pull.
   */
  private async verifyAndStore(i: number, payload: Buffer): Promise<void> {
    try {
      const ok = hex(await subtle.digest('SHA-256', payload)) === this.expected[i];
      if (!ok) {
        if (this.settle) this.onBadBlock(i, payload.length);
        return;
      }
      this.stallTimer?.refresh();
      this.fileHash?.add(i, payload);
      const staging = this.staging;
      if (!staging || this.ioFailed) return;
      await staging.write(payload, i * this.artifact.blockSize);
      this.progress.written(i);
    } catch (err) {
      this.ioFail(err);
    } finally {
      this.buffered -= payload.length;
      this.fillWindow();
    }
  }

  private onBadBlock(i: number, length: number): void {
    const failures = (this.hashFailures.get(i) ?? 0) + 1;
    this.hashFailures.set(i, failures);
    if (failures > this.maxBlockRetries) {
      this.fail(
        new BlockPullError(
          'BLOCK_HASH',
          `artifact block ${i} of ${this.total} failed its sha256 check ${failures} times; ` +
            'the published artifact does not match its signed manifest',
          i,
        ),
      );
      return;
    }
    this.log.warn({ block: i, length, failures }, 'artifact block failed its hash check; asking again');
    this.queue.unshift(i); // first in line for the window
    this.fillWindow();
  }

  private giveUp(): void {
    // The queue is in order, so its head is the lowest block not yet asked for.
    const i = Math.min(...this.outstanding.keys(), this.queue[0] ?? this.total);
    this.fail(
      new BlockPullError(
        'BLOCK_MISSING',
        `artifact block ${i} of ${this.total} never arrived (topic ${this.topic(i)}); is the artifact published?`,
        i,
      ),
    );
  }

  private stopReceiving(): void {
    this.settle = undefined;
    this.client.off('message', this.onMessage);
    this.client.off('connect', this.onConnect);
    clearTimeout(this.stallTimer);
    for (const [i, slot] of this.outstanding) {
      clearTimeout(slot.timer);
      this.unsubscribe(i);
    }
    this.outstanding.clear();
  }

  /** Waits for writes in flight and records them, so an abort keeps its progress. */
  private async cleanup(): Promise<void> {
    this.stopReceiving();
    while (this.pipeline.size > 0) await Promise.allSettled([...this.pipeline]);
    await this.progress.settled();
    const staging = this.staging;
    this.staging = undefined;
    await staging?.close();
  }

  private async verifyFile(): Promise<void> {
    const staging = this.openStaging();
    const size = await staging.size();
    const digest = this.fileHash?.digest(this.total) ?? (await readBackSha256(staging, size));
    if (size === this.artifact.size && digest === this.artifact.sha256.toLowerCase()) return;
    // Every block matched yet the whole does not: the manifest is inconsistent.
    // Start from scratch next time rather than trust any of these blocks. On a
    // full disk the rows stay (the rollout deletes them with the staging file
    // once it is free to): FILE_HASH is what this pull reports either way.
    try {
      this.progress.clear();
    } catch (err) {
      if (!isNoSpace(err)) throw err;
    }
    throw new BlockPullError(
      'FILE_HASH',
      `artifact ${this.artifact.sha256} is ${size} bytes with sha256 ${digest}; ` +
        `the manifest says ${this.artifact.size} bytes with that sha256`,
    );
  }
}

const { subtle } = webcrypto;

function hex(digest: ArrayBuffer): string {
  return Buffer.from(digest).toString('hex');
}

function abortedError(): BlockPullError {
  return new BlockPullError('ABORTED', 'artifact pull aborted');
}
