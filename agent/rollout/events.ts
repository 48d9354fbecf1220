import type { Logger } from 'pino';
import type { Shadow } from '../../protocol/desired.js';
import { errorMessage } from '../errors.js';
import type { FailureCode, Outcome } from './errors.js';
import type { VersionRef } from './planner.js';

/** Where the desired document being reported came from. */
export interface DesiredOrigin {
  source: 'device' | 'group';
  group?: string;
}

export interface AcceptedModel extends VersionRef {
  labels: string[];
  /** From the verified manifest; null if it has none. */
  sha256: string | null;
}

type Model = VersionRef;

/** A trust version and when it expires, as reported. */
export interface TrustRef {
  version: number;
  expiresAt: string;
}

/**
 * What the rollout does, as typed facts (balena-supervisor's step events):
 * the rollout and executor emit them, report-projection.ts turns them into
 * reported state and MQTT events. Emitting one is the only way the doing code
 * touches reporting.
 */
export type RolloutEvent =
  // Desired documents and trust.
  | { type: 'desired.accepted'; origin: DesiredOrigin; serial: number; from: string; models: AcceptedModel[]; available: VersionRef[] }
  | { type: 'desired.rejected'; origin: DesiredOrigin; serial: number; code: FailureCode; error: string }
  /** The document being applied before a restart is picked up again, or goes on after a full disk had stopped it. */
  | { type: 'desired.resumed'; origin: DesiredOrigin; serial: number }
  /**
   * The document cannot go on until a condition of the device clears (a full
   * disk: recording it, or a step); reported `failed` with why, retried meanwhile.
   */
  | { type: 'desired.waiting'; origin: DesiredOrigin; serial: number; error: string }
  /** The document being applied before a restart no longer verifies (rotated trust). */
  | { type: 'desired.dropped'; origin: DesiredOrigin; serial: number; error: string }
  /** Nothing is left to do for the active document; `error` is the worst blocked version's. */
  | { type: 'desired.settled'; origin: DesiredOrigin; serial: number; status: 'applied' | 'failed' | 'rejected'; error: string | null }
  /** The trust in force when the rollout starts. */
  | ({ type: 'trust.loaded' } & TrustRef)
  /** A rotation accepted and persisted; `topic` says where it came from ({root}/trust or a link of the chain). */
  | ({ type: 'trust.updated'; topic: string } & TrustRef)
  /** A trust message refused, or the chain that stops short; the trust in force is unchanged. */
  | { type: 'trust.rejected'; current: TrustRef; error: string }
  // Steps on one model version.
  | (Model & { type: 'fetch.started'; sha256: string; size: number; blocks: number })
  /** Blocks durable so far (counting those recorded before a restart). */
  | (Model & { type: 'fetch.progress'; done: number; total: number })
  /** Every block is in: the whole file is checked and installed. */
  | (Model & { type: 'fetch.verifying' })
  | (Model & { type: 'fetch.completed' })
  /** The stored manifest and file are checked again right before loading. */
  | (Model & { type: 'verify.started'; sha256: string })
  | (Model & { type: 'load.started' })
  | (Model & { type: 'load.completed'; executionProvider: string })
  /** Loaded beside `baseVersion`, compared on live requests before any switch (section 11). */
  | (Model & { type: 'shadow.started'; baseVersion: number; spec: Shadow })
  /** Comparisons done so far. */
  | (Model & { type: 'shadow.progress'; samples: number; minSamples: number })
  /** The verdict: `activated` goes on to the switch, `rejected` fails the step (SHADOW_REJECTED). */
  | (Model & { type: 'shadow.completed'; baseVersion: number; verdict: 'activated' | 'rejected'; reason: string })
  /** Serves beside the default version: no switch, no health window. */
  | (Model & { type: 'added' })
  /** Serves again after a restart, as it did before it. */
  | (Model & { type: 'restored' })
  | (Model & { type: 'activated'; previous: number | undefined })
  | (Model & { type: 'rolled-back'; reason: string })
  | (Model & { type: 'unloaded' })
  /** A step failed; `retrying` says whether it will be tried again. Steps without a version carry none. */
  | { type: 'step.failed'; name: string; version: number | undefined; outcome: Outcome; attempt: number; maxAttempts: number; retrying: boolean }
  /** A download or switch abandoned because the document accepted since (`serial`) no longer needs it. */
  | (Model & { type: 'step.superseded'; step: 'fetch' | 'activate'; serial: number })
  /** A message on a desired or trust topic dropped unread for its size (rate limited: refused-messages.ts). */
  | { type: 'message.refused'; topic: string; bytes: number; limit: number; suppressed: number };

export type RolloutEventType = RolloutEvent['type'];
export type RolloutListener = (event: RolloutEvent) => void;

/**
 * A small typed event bus (zigbee2mqtt's lib/eventBus.ts). Delivery is
 * synchronous, in emit order, so reported state follows the steps exactly. A
 * listener that throws is logged: reporting never breaks a rollout.
 */
export class RolloutEvents {
  private readonly listeners = new Set<RolloutListener>();

  constructor(private readonly logger: Logger) {}

  on(listener: RolloutListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: RolloutEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (err) {
        this.logger.error({ type: event.type, err: errorMessage(err) }, 'rollout event listener failed');
      }
    }
  }
}
