import type { Logger } from 'pino';

/** The part of an mqtt.js client a batch sends with. */
export interface SubscribeClient {
  subscribeAsync(topics: string[], opts: { qos: 0 | 1 }): Promise<unknown>;
  unsubscribeAsync(topics: string[]): Promise<unknown>;
}

/**
 * Subscribes and unsubscribes made in one event-loop turn go out as one
 * UNSUBSCRIBE and one SUBSCRIBE packet (MQTT carries a list of topics in
 * each), in that order, so an unsubscribe-then-subscribe re-ask stays one.
 * Subscriptions are QoS 0 (see BlockPuller.ask). A failure is only logged:
 * the puller's timers ask again.
 */
export class SubscriptionBatch {
  private toSubscribe: string[] = [];
  private toUnsubscribe: string[] = [];
  private queued = false;

  constructor(
    private readonly client: SubscribeClient,
    private readonly log: Logger,
  ) {}

  subscribe(topic: string): void {
    this.toSubscribe.push(topic);
    this.queue();
  }

  unsubscribe(topic: string): void {
    this.toUnsubscribe.push(topic);
    this.queue();
  }

  private queue(): void {
    if (this.queued) return;
    this.queued = true;
    queueMicrotask(this.send);
  }

  private readonly send = (): void => {
    this.queued = false;
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
}
