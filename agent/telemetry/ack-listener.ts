import type { Logger } from 'pino';
import { parseTelemetryAck, topics } from '../../protocol/index.js';
import { errorMessage } from '../errors.js';
import type { MessageHandler } from '../mqtt/connection.js';
import type { AckOutcome, TelemetryOutbox } from './outbox.js';

/**
 * telemetry.delivery `collector` (PROTOCOL.md section 12): listens on the
 * device's own `{root}/devices/{id}/telemetry/ack` (QoS 1; the retained ack
 * comes on every subscribe) and hands each valid upTo to the outbox, which
 * keeps the highest durably and deletes the points at or below it. An ack
 * that is malformed, names another device or acknowledges seqs this device
 * never issued changes nothing and is logged, at most once a minute per kind
 * (with how many were ignored meanwhile), so a misbehaving publisher cannot
 * flood the journal.
 */

/** What the listener needs of the MQTT connection (MqttConnection fits). */
export interface AckTransport {
  subscribe(topic: string): Promise<void>;
  onMessage(handler: MessageHandler): () => void;
}

export interface TelemetryAckListenerOptions {
  outbox: TelemetryOutbox;
  transport: AckTransport;
  topicRoot: string;
  deviceId: string;
  logger: Logger;
  /** Least time between two logs of the same kind of ignored ack. */
  logIntervalMs?: number;
  /** Called after an ack removed points (tests, metrics). */
  onAck?: (outcome: AckOutcome) => void;
}

type Ignored = 'malformed' | 'other device' | 'ahead';

export class TelemetryAckListener {
  readonly topic: string;
  private removeHandler: (() => void) | undefined;
  private stopped = true;
  private readonly lastLogged = new Map<Ignored, number>();
  private readonly suppressed = new Map<Ignored, number>();

  constructor(private readonly options: TelemetryAckListenerOptions) {
    this.topic = topics.telemetryAck(options.topicRoot, options.deviceId);
  }

  /**
   * Subscribes without waiting for the SUBACK: offline, mqtt.js holds the
   * SUBSCRIBE until the broker connects, and it is asked again after a
   * reconnect that lost the session, as for the rollout's topics.
   */
  async start(): Promise<void> {
    this.stopped = false;
    this.removeHandler = this.options.transport.onMessage((topic, payload) => {
      if (topic === this.topic) this.receive(payload);
    });
    this.options.transport.subscribe(this.topic).then(
      () => this.options.logger.debug({ topic: this.topic }, 'subscribed to telemetry acks'),
      (err: unknown) => {
        if (!this.stopped) this.options.logger.error({ topic: this.topic, err: errorMessage(err) }, 'could not subscribe to telemetry acks; points stay in the outbox until they are dropped by its bounds');
      },
    );
  }

  /** Stops handling acks; the subscription stays with the session (the next start gets the retained ack anyway). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.removeHandler?.();
    this.removeHandler = undefined;
  }

  /** Handles one ack payload (public for tests of the parsing rules). */
  receive(payload: Buffer | string): void {
    if (this.stopped) return;
    const { outbox, deviceId, logger } = this.options;
    let upTo: number;
    try {
      const ack = parseTelemetryAck(payload);
      if (ack.device !== deviceId) {
        this.ignored('other device', { device: ack.device, upTo: ack.upTo }, `ignored a telemetry ack naming device "${ack.device}" on this device's ack topic (${this.topic})`);
        return;
      }
      upTo = ack.upTo;
    } catch (err) {
      this.ignored('malformed', { bytes: payload.length }, `ignored a malformed telemetry ack on ${this.topic}: ${errorMessage(err)}`);
      return;
    }
    let outcome: AckOutcome;
    try {
      outcome = outbox.acknowledge(upTo);
    } catch (err) {
      logger.warn({ upTo, err: errorMessage(err) }, 'could not apply a telemetry ack; the retained ack is applied again on the next connect');
      return;
    }
    if (outcome.kind === 'ahead') {
      this.ignored('ahead', { upTo, highestIssued: outcome.highestIssued }, `ignored a telemetry ack up to seq ${upTo}: this device has issued seqs only up to ${outcome.highestIssued} (was its state database reset?)`);
      return;
    }
    if (outcome.kind === 'advanced') logger.debug({ upTo, deleted: outcome.deleted }, 'telemetry acknowledged by a collector');
    this.options.onAck?.(outcome);
  }

  private ignored(kind: Ignored, detail: Record<string, unknown>, message: string): void {
    const now = Date.now();
    const last = this.lastLogged.get(kind);
    if (last !== undefined && now - last < (this.options.logIntervalMs ?? 60_000)) {
      this.suppressed.set(kind, (this.suppressed.get(kind) ?? 0) + 1);
      return;
    }
    const alsoIgnored = this.suppressed.get(kind) ?? 0;
    this.lastLogged.set(kind, now);
    this.suppressed.delete(kind);
    this.options.logger.warn({ ...detail, ...(alsoIgnored > 0 && { alsoIgnored }) }, message);
  }
}
