import { createHash, webcrypto, type Hash } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { blockCount } from '../../protocol/manifest.js';
import type { AgentDatabase } from '../store/database.js';
import { fsyncDir } from '../store/fs-atomic.js';
import { RolloutError } from './errors.js';

/**
 * Pulls one artifact's blocks from the broker (docs/protocol.md section 5): retained
 * QoS 1 messages on `{root}/artifacts/{sha256}/blocks/{i}`, asked for by
 * subscribing a window at a time. The window is what is in flight on the
 * network: a block that arrives frees its place at once, and its check and
 * write run behind it (bounded by 2 windows of bytes in memory).
 *
 * Progress is durable: a block is recorded in `artifact_blocks` only after its
 * bytes are fsynced in the staging file (group commit), so a restart asks only
 * for what is missing and never trusts half-written bytes. The rows are
 * committed without a WAL fsync of their own (AgentDatabase.relaxed): a kill
 * keeps them, power loss may drop the last few, which only means those blocks
 * are fetched again.
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

/** Forgets an artifact's pull progress, so the next pull starts from scratch. */
export function clearArtifactProgress(db: AgentDatabase, sha256: string): void {
  db.db.prepare('DELETE FROM artifact_blocks WHERE sha256 = ?').run(sha256);
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
  private fh: FileHandle | undefined;
  /** Missing blocks not yet asked for, in order. */
  private queue: number[] = [];
  private readonly outstanding = new Map<number, Slot>();
  /** Blocks that failed their check so far, by index. */
  private readonly hashFailures = new Map<number, number>();
  /** Written to the staging file but not yet fsynced. */
  private written: number[] = [];
  private durable = 0;
  /** Blocks being verified and written. */
  private readonly pipeline = new Set<Promise<void>>();
  /** Bytes received and not yet written; the window stops growing past maxBuffered. */
  private buffered = 0;
  private readonly maxBuffered: number;
  /** The running whole-file hash (a fresh pull only; see hashInOrder). */
  private fileHash: Hash | undefined;
  private hashNext = 0;
  private readonly hashAhead = new Map<number, Buffer>();
  private hashAheadBytes = 0;
  private toSubscribe: string[] = [];
  private toUnsubscribe: string[] = [];
  private requestsQueued = false;
  private flushing: Promise<void> | undefined;
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
  }

  /** Resolves once the whole staging file is in and matches size and sha256. Call once. */
  async pull(): Promise<void> {
    if (this.started) throw new Error('BlockPuller.pull() may only be called once');
    this.started = true;
    try {
      const kept = await this.openStaging();
      if (!kept) clearArtifactProgress(this.options.db, this.artifact.sha256);
      const done = this.loadDone();
      this.durable = done.size;
      this.queue = [];
      for (let i = 0; i < this.total; i++) if (!done.has(i)) this.queue.push(i);
      if (done.size === 0) this.fileHash = createHash('sha256');
      this.log.info({ blocks: this.total, missing: this.queue.length }, 'pulling artifact blocks');
      this.options.onProgress?.(this.durable, this.total);
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

  private async openStaging(): Promise<boolean> {
    const file = this.options.stagingFile;
    await mkdir(dirname(file), { recursive: true });
    let kept = true;
    try {
      this.fh = await open(file, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.fh = await open(file, 'w+');
      kept = false;
    }
    const { size } = await this.fh.stat();
    if (size !== this.artifact.size) {
      // Sparse: blocks fill it in any order. A file of another size cannot
      // hold the recorded blocks, so their rows are not trusted either.
      kept = false;
      await this.fh.truncate(this.artifact.size);
    }
    if (!kept) {
      await this.fh.sync();
      await fsyncDir(dirname(file)); // the name must outlive power loss before any row refers to it
    }
    return kept;
  }

  private loadDone(): Set<number> {
    const rows = this.options.db.db
      .prepare<[string], { idx: number }>('SELECT idx FROM artifact_blocks WHERE sha256 = ?')
      .all(this.artifact.sha256);
    return new Set(rows.map((r) => r.idx).filter((i) => i >= 0 && i < this.total));
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
    this.request('sub', i);
    this.armTimer(i, slot);
  }

  private unsubscribe(i: number): void {
    this.request('unsub', i);
  }

  /**
   * Subscribes and unsubscribes made in one event-loop turn go out as one
   * UNSUBSCRIBE and one SUBSCRIBE packet (MQTT carries a list of topics in
   * each), in that order, so an unsubscribe-then-subscribe re-ask stays one.
   */
  private request(kind: 'sub' | 'unsub', i: number): void {
    (kind === 'sub' ? this.toSubscribe : this.toUnsubscribe).push(this.topic(i));
    if (this.requestsQueued) return;
    this.requestsQueued = true;
    queueMicrotask(this.sendRequests);
  }

  private readonly sendRequests = (): void => {
    this.requestsQueued = false;
    const unsub = this.toUnsubscribe;
    const sub = this.toSubscribe;
    this.toUnsubscribe = [];
    this.toSubscribe = [];
    if (unsub.length > 0) {
      this.client.unsubscribeAsync(unsub).catch((err: unknown) => this.log.debug({ err, topics: unsub.length }, 'unsubscribe failed'));
    }
    if (sub.length > 0) {
      this.client.subscribeAsync(sub, { qos: 0 }).catch((err: unknown) => this.log.debug({ err, topics: sub.length }, 'subscribe failed'));
    }
  };

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
      this.hashInOrder(i, payload);
      const fh = this.fh;
      if (!fh || this.ioFailed) return;
      await fh.write(payload, 0, payload.length, i * this.artifact.blockSize);
      this.written.push(i);
      this.kickFlush();
    } catch (err) {
      this.ioFailed = true;
      this.fail(err);
    } finally {
      this.buffered -= payload.length;
      this.fillWindow();
    }
  }

  /**
   * The whole-file sha256, fed block by block in order as they are verified,
   * so that the check at the end needs no second pass over the file. Blocks
   * verified ahead of a gap wait in memory up to MAX_HASH_AHEAD_BYTES; past
   * that (a block keeps failing to come) the running hash is dropped and the
   * file is read back at the end instead, as it is on a resumed pull.
   */
  private hashInOrder(i: number, payload: Buffer): void {
    if (!this.fileHash) return;
    if (i !== this.hashNext) {
      this.hashAhead.set(i, payload);
      this.hashAheadBytes += payload.length;
      if (this.hashAheadBytes > MAX_HASH_AHEAD_BYTES) this.dropFileHash();
      return;
    }
    this.fileHash.update(payload);
    this.hashNext++;
    for (let next = this.hashAhead.get(this.hashNext); next; next = this.hashAhead.get(this.hashNext)) {
      this.hashAhead.delete(this.hashNext);
      this.hashAheadBytes -= next.length;
      this.fileHash.update(next);
      this.hashNext++;
    }
  }

  private dropFileHash(): void {
    this.fileHash = undefined;
    this.hashAhead.clear();
    this.hashAheadBytes = 0;
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

  /**
   * Group commit: one fsync covers every block written before it started;
   * blocks written meanwhile wait for the next. Fast disks sync per block,
   * slow ones batch themselves.
   */
  private kickFlush(): void {
    if (this.flushing || this.ioFailed) return;
    this.flushing = this.flushLoop()
      .catch((err: unknown) => {
        this.ioFailed = true;
        this.fail(err);
      })
      .finally(() => {
        this.flushing = undefined;
        if (this.written.length > 0) this.kickFlush(); // written after the loop's last check
      });
  }

  private async flushLoop(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    const insert = this.options.db.db.prepare<[string, number]>(
      'INSERT OR IGNORE INTO artifact_blocks (sha256, idx) VALUES (?, ?)',
    );
    const record = this.options.db.db.transaction((batch: number[]) => {
      for (const i of batch) insert.run(this.artifact.sha256, i);
    });
    while (this.written.length > 0) {
      const batch = this.written;
      this.written = [];
      await fh.sync(); // the bytes are durable before a row says so
      this.options.db.relaxed(() => record(batch));
      this.durable += batch.length;
      this.options.onProgress?.(this.durable, this.total);
      if (this.durable >= this.total) this.settle?.resolve();
    }
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
    while (this.flushing) await this.flushing;
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }

  private async verifyFile(): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new Error('staging file is not open');
    const { size } = await fh.stat();
    let hash = this.fileHash;
    if (!hash || this.hashNext !== this.total) {
      hash = createHash('sha256');
      const buffer = Buffer.alloc(1 << 20);
      for (let position = 0; position < size; ) {
        const { bytesRead } = await fh.read(buffer, 0, buffer.length, position);
        if (bytesRead === 0) break;
        hash.update(buffer.subarray(0, bytesRead));
        position += bytesRead;
      }
    }
    const digest = hash.digest('hex');
    if (size === this.artifact.size && digest === this.artifact.sha256.toLowerCase()) return;
    // Every block matched yet the whole does not: the manifest is inconsistent.
    // Start from scratch next time rather than trust any of these blocks.
    clearArtifactProgress(this.options.db, this.artifact.sha256);
    throw new BlockPullError(
      'FILE_HASH',
      `artifact ${this.artifact.sha256} is ${size} bytes with sha256 ${digest}; ` +
        `the manifest says ${this.artifact.size} bytes with that sha256`,
    );
  }
}

const { subtle } = webcrypto;

/** Verified blocks kept for the running whole-file hash while an earlier one is missing. */
const MAX_HASH_AHEAD_BYTES = 8 * 1024 * 1024;

function hex(digest: ArrayBuffer): string {
  return Buffer.from(digest).toString('hex');
}

function abortedError(): BlockPullError {
  return new BlockPullError('ABORTED', 'artifact pull aborted');
}
