/**
 * Messages the MQTT connection dropped unread for their size
 * (agent/mqtt/packet-size-guard.ts), as the fleet hears of them: a device that
 * ignores a desired or trust document should say why. A broker sends a
 * retained message again on every reconnect, and a hostile one can send many,
 * so the reports are rate limited: at most one per topic per `perTopicMs`,
 * and `perWindow` across all topics per `windowMs`. Refusals held back are
 * counted in the next report for their topic.
 */

export interface RefusedMessage {
  topic: string;
  /** The whole packet's size. */
  bytes: number;
  /** mqtt.maxPacketBytes. */
  limit: number;
}

export interface RefusalReport extends RefusedMessage {
  /** Refusals on this topic held back since its last report. */
  suppressed: number;
}

export interface RefusalLimiterOptions {
  perTopicMs?: number;
  windowMs?: number;
  perWindow?: number;
  now?: () => number;
}

/** Topics remembered; past this the oldest are forgotten (their held-back counts with them). */
const MAX_TOPICS = 256;

export class RefusalLimiter {
  private readonly perTopicMs: number;
  private readonly windowMs: number;
  private readonly perWindow: number;
  private readonly now: () => number;
  /** Per topic: when it was last reported, and how many were held back since. */
  private readonly topics = new Map<string, { reportedAt: number; held: number }>();
  /** When the reports of the current window were made. */
  private recent: number[] = [];

  constructor(options: RefusalLimiterOptions = {}) {
    this.perTopicMs = options.perTopicMs ?? 60_000;
    this.windowMs = options.windowMs ?? 60_000;
    this.perWindow = options.perWindow ?? 10;
    this.now = options.now ?? Date.now;
  }

  /** The report to make for `message` now, or undefined when it is held back. */
  offer(message: RefusedMessage): RefusalReport | undefined {
    const now = this.now();
    this.recent = this.recent.filter((t) => now - t < this.windowMs);
    const seen = this.topics.get(message.topic);
    const topicQuiet = seen === undefined || now - seen.reportedAt >= this.perTopicMs;
    if (!topicQuiet || this.recent.length >= this.perWindow) {
      if (seen) seen.held++;
      else this.remember(message.topic, { reportedAt: -Infinity, held: 1 });
      return undefined;
    }
    this.recent.push(now);
    this.remember(message.topic, { reportedAt: now, held: 0 });
    return { ...message, suppressed: seen?.held ?? 0 };
  }

  private remember(topic: string, entry: { reportedAt: number; held: number }): void {
    this.topics.delete(topic);
    this.topics.set(topic, entry);
    if (this.topics.size > MAX_TOPICS) this.topics.delete(this.topics.keys().next().value as string);
  }
}
