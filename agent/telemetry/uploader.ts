import type { Logger } from 'pino';
import { topics } from '../../protocol/index.js';
import { CoalescedPass } from '../coalesce.js';
import { errorMessage } from '../errors.js';
import type { OutboxBatch, TelemetryOutbox } from './outbox.js';

/**
 * Publishes the outbox as telemetry batches (docs/protocol.md section 7) at QoS 1
 * on `{root}/devices/{id}/telemetry`, one batch in flight at a time, and
 * deletes a batch's rows only once the broker's PUBACK has come back. A batch
 * cut off by a lost connection stays in mqtt.js's session store and is sent
 * again after reconnecting (so a collector may see it twice: it de-duplicates
 * on seq). Draining starts on every connect, shortly after each append
 * (debounced, so a cut's points and a health point share a batch), and
 * periodically as a safety net.
 */

/** What the uploader needs of the MQTT connection (MqttConnection fits). */
export interface TelemetryTransport {
  readonly connected: boolean;
  publish(topic: string, payload: string | Buffer, options: { qos: 0 | 1; retain: boolean }): Promise<void>;
  onConnect(listener: () => void): () => void;
}

export interface TelemetryUploaderOptions {
  outbox: TelemetryOutbox;
  transport: TelemetryTransport;
  topicRoot: string;
  deviceId: string;
  logger: Logger;
  /** Most points per batch. */
  batchPoints: number;
  /** Most JSON bytes of points per batch (one larger point still goes alone). */
  batchBytes: number;
  /** Delay after an append before draining, to gather points into one batch. */
  debounceMs: number;
  /** Drain attempt interval, besides connects and appends. */
  periodMs: number;
  /**
   * A batch unacknowledged this long while connected is given up on and sent
   * again from the outbox (a duplicate at worst). Time spent offline does not
   * count: mqtt.js resends it after the reconnect.
   */
  ackTimeoutMs: number;
  /** Bound on the final flush in stop(). */
  stopTimeoutMs: number;
}

export class TelemetryUploader {
  private readonly topic: string;
  private readonly prefix: string;
  private readonly drains = new CoalescedPass(async () => {
    while (await this.sendOne());
  });
  private stopped = true;
  /** Set when stop() has given up waiting: the loop must not start another batch. */
  private halted = false;
  private debounceTimer: NodeJS.Timeout | undefined;
  private periodTimer: NodeJS.Timeout | undefined;
  private readonly cleanups: (() => void)[] = [];

  constructor(private readonly options: TelemetryUploaderOptions) {
    this.topic = topics.device(options.topicRoot, options.deviceId, 'telemetry');
    this.prefix = `{"schema":1,"device":${JSON.stringify(options.deviceId)},"points":[`;
  }

  async start(): Promise<void> {
    const { outbox, transport } = this.options;
    this.stopped = false;
    this.halted = false;
    this.cleanups.push(transport.onConnect(() => void this.drain()));
    this.cleanups.push(outbox.onAppend(() => this.soon()));
    this.periodTimer = setInterval(() => void this.drain(), this.options.periodMs);
    this.periodTimer.unref();
    void this.drain();
  }

  /** Stops draining on its own, then sends what it can within stopTimeoutMs. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.periodTimer);
    clearTimeout(this.debounceTimer);
    for (const cleanup of this.cleanups.splice(0)) cleanup();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), this.options.stopTimeoutMs)));
    const flushed = await Promise.race([this.drain(true).then(() => true), timeout]);
    clearTimeout(timer);
    this.halted = true;
    const left = this.remaining();
    if (!flushed || left > 0) this.options.logger.info({ left }, 'telemetry left in the outbox for the next start');
  }

  /**
   * Sends batches until the outbox is empty or the connection is gone.
   * Concurrent calls share the running loop, which goes round once more.
   */
  drain(final = false): Promise<void> {
    if (this.stopped && !final) return Promise.resolve();
    return this.drains.run();
  }

  private soon(): void {
    if (this.debounceTimer || this.stopped) return;
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      void this.drain();
    }, this.options.debounceMs);
  }

  /** Publishes the oldest batch; true when it was acknowledged and more may wait. */
  private async sendOne(): Promise<boolean> {
    const { outbox, transport, logger } = this.options;
    if (!transport.connected || this.halted) return false;
    let batch: OutboxBatch | undefined;
    try {
      outbox.reportDrops();
      batch = outbox.lease(this.options.batchPoints, this.options.batchBytes);
      if (!batch) return false;
      const payload = `${this.prefix}${batch.bodies.join(',')}]}`;
      const acked = await this.publish(payload);
      if (!acked) {
        logger.warn({ fromSeq: batch.fromSeq, toSeq: batch.toSeq }, 'telemetry batch not acknowledged in time; sending it again');
        outbox.release();
        return transport.connected;
      }
      outbox.ack(batch);
      logger.debug({ fromSeq: batch.fromSeq, toSeq: batch.toSeq, points: batch.bodies.length }, 'telemetry batch acknowledged');
      return true;
    } catch (err) {
      if (batch) outbox.release();
      logger[this.halted ? 'debug' : 'warn']({ err: errorMessage(err) }, 'could not upload telemetry; will retry');
      return false;
    }
  }

  /** Publishes at QoS 1: true on PUBACK, false after ackTimeoutMs of connected time without one. */
  private publish(payload: string): Promise<boolean> {
    const { transport, ackTimeoutMs } = this.options;
    return new Promise<boolean>((resolve, reject) => {
      let waited = 0;
      const step = Math.min(1000, ackTimeoutMs);
      const timer = setInterval(() => {
        if (transport.connected) waited += step;
        if (waited >= ackTimeoutMs) {
          clearInterval(timer);
          resolve(false);
        }
      }, step);
      transport.publish(this.topic, payload, { qos: 1, retain: false }).then(
        () => {
          clearInterval(timer);
          resolve(true);
        },
        (err: unknown) => {
          clearInterval(timer);
          reject(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
  }

  private remaining(): number {
    try {
      return this.options.outbox.stats().rows;
    } catch {
      return -1; // outbox already stopped
    }
  }
}
