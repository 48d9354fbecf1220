import type { Logger } from 'pino';
import { topics } from '../../protocol/index.js';
import { CoalescedPass } from '../coalesce.js';
import { errorMessage } from '../errors.js';
import type { OutboxBatch, TelemetryOutbox } from './outbox.js';

/**
 * Publishes the outbox as telemetry batches (docs/protocol.md section 7) at QoS 1
 * on `{root}/devices/{id}/telemetry`, one batch in flight at a time. With
 * delivery `broker` it deletes a batch's rows once the broker's PUBACK has
 * come back. With `collector` (section 12) the PUBACK only records when the
 * points were sent; a collector's ack deletes them (ack-listener.ts), and
 * points still unacknowledged resendAfterMs after they were sent go again,
 * in seq order (a timer wakes the loop when the oldest falls due). A batch
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

/** PROTOCOL.md section 12: who acknowledges a point, so that it leaves the outbox. */
export type TelemetryDelivery = 'broker' | 'collector';

export interface TelemetryUploaderOptions {
  outbox: TelemetryOutbox;
  /** Default `broker`. */
  delivery?: TelemetryDelivery;
  /** Collector mode: points sent this long ago and still unacknowledged are sent again (telemetry.ackTimeoutS). */
  resendAfterMs?: number;
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
  private readonly drains: CoalescedPass;
  private stopped = true;
  /** Set when stop() has given up waiting: the loop must not start another batch. */
  private halted = false;
  private debounceTimer: NodeJS.Timeout | undefined;
  private periodTimer: NodeJS.Timeout | undefined;
  private resendTimer: NodeJS.Timeout | undefined;
  /** Collector mode, full disk: sent times could not be recorded, so nothing is leased before this (epoch ms). */
  private holdUntil = 0;
  private readonly delivery: TelemetryDelivery;
  private readonly resendAfterMs: number;
  private readonly cleanups: (() => void)[] = [];

  constructor(private readonly options: TelemetryUploaderOptions) {
    this.topic = topics.device(options.topicRoot, options.deviceId, 'telemetry');
    this.prefix = `{"schema":1,"device":${JSON.stringify(options.deviceId)},"points":[`;
    this.delivery = options.delivery ?? 'broker';
    this.resendAfterMs = options.resendAfterMs ?? 300_000;
    this.drains = new CoalescedPass(async () => {
      while (await this.sendOne());
      this.scheduleResend();
    });
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
    clearTimeout(this.resendTimer);
    for (const cleanup of this.cleanups.splice(0)) cleanup();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), this.options.stopTimeoutMs)));
    const flushed = await Promise.race([this.drain(true).then(() => true), timeout]);
    clearTimeout(timer);
    this.halted = true;
    clearTimeout(this.resendTimer);
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

  /**
   * Collector mode: wakes the loop when the oldest unacknowledged point falls
   * due again (or the full-disk hold ends). The periodic drain is the safety net.
   */
  private scheduleResend(): void {
    if (this.delivery !== 'collector' || this.stopped) return;
    clearTimeout(this.resendTimer);
    let due: number | undefined;
    try {
      const sentAt = this.options.outbox.oldestSentAt();
      if (sentAt !== undefined) due = sentAt + this.resendAfterMs;
    } catch {
      return; // outbox stopped
    }
    if (this.holdUntil > Date.now()) due = Math.max(due ?? 0, this.holdUntil);
    if (due === undefined) return;
    this.resendTimer = setTimeout(() => void this.drain(), Math.max(0, due - Date.now()) + 1);
    this.resendTimer.unref();
  }

  /** Publishes the oldest batch; true when it was acknowledged and more may wait. */
  private async sendOne(): Promise<boolean> {
    const { outbox, transport, logger } = this.options;
    if (!transport.connected || this.halted) return false;
    const collector = this.delivery === 'collector';
    if (collector && Date.now() < this.holdUntil) return false;
    let batch: OutboxBatch | undefined;
    try {
      outbox.reportDrops();
      batch = outbox.lease(this.options.batchPoints, this.options.batchBytes, collector ? { sentBefore: Date.now() - this.resendAfterMs } : {});
      if (!batch) return false;
      const payload = `${this.prefix}${batch.bodies.join(',')}]}`;
      const acked = await this.publish(payload);
      if (!acked) {
        logger.warn({ fromSeq: batch.fromSeq, toSeq: batch.toSeq }, 'telemetry batch not acknowledged in time; sending it again');
        outbox.release();
        return transport.connected;
      }
      if (!collector) {
        outbox.ack(batch);
        logger.debug({ fromSeq: batch.fromSeq, toSeq: batch.toSeq, points: batch.bodies.length }, 'telemetry batch acknowledged');
        return true;
      }
      if (batch.resent > 0) {
        logger.info({ fromSeq: batch.fromSeq, toSeq: batch.toSeq, resent: batch.resent, ackTimeoutS: this.resendAfterMs / 1000 }, 'sent telemetry again that no collector acknowledged in time');
      }
      if (!outbox.markSent(batch, Date.now())) {
        // Without a record of the send, the same points would be leased again at once.
        this.holdUntil = Date.now() + this.resendAfterMs;
        logger.warn({ holdS: this.resendAfterMs / 1000 }, 'no room to record sent telemetry; sending nothing more until the ack timeout has passed');
        return false;
      }
      logger.debug({ fromSeq: batch.fromSeq, toSeq: batch.toSeq, points: batch.bodies.length }, 'telemetry batch taken by the broker; kept until a collector acknowledges it');
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
