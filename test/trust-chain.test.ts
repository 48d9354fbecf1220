/**
 * The trust chain walk (docs/protocol.md section 3, revision 2) on a real
 * TrustStore and real files: versions offered as `{root}/trust/{version}` and
 * `{root}/trust` would deliver them, in any order, and what the walk reports.
 * No broker: trust-catch-up.test.ts runs the same walk in a real agent.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { RolloutEvents, type RolloutEvent } from '../agent/rollout/events.js';
import { TrustChain } from '../agent/rollout/trust-chain.js';
import { TrustStore } from '../agent/rollout/trust-store.js';
import {
  buildTrustDocument, encodeDocument, generateKeyPair, PAYLOAD_TYPES, parseTopic, signEnvelope, topics, trustDocumentSchema,
} from '../protocol/index.js';
import type { Envelope, KeyPair, TrustDocument } from '../protocol/index.js';

const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });
const ROOT = 'r';
const GRACE_MS = 1000;

const roots = Array.from({ length: 6 }, () => generateKeyPair());
const models = generateKeyPair();
const rollouts = Array.from({ length: 6 }, () => generateKeyPair());
const root = (version: number): KeyPair => roots[version - 1] as KeyPair;

/** Trust version `version`: its own root and rollout key, so each version trusts something new. */
function trustDoc(version: number): TrustDocument {
  return buildTrustDocument({
    version,
    expiresAt: '2036-01-01T00:00:00Z',
    roles: {
      root: { publicKeys: [root(version).publicKey], threshold: 1 },
      models: { publicKeys: [models.publicKey], threshold: 1 },
      rollout: { publicKeys: [(rollouts[version - 1] as KeyPair).publicKey], threshold: 1 },
    },
  });
}

function envelope(doc: TrustDocument, signers: KeyPair[]): Envelope {
  return signEnvelope(PAYLOAD_TYPES.trust, encodeDocument(trustDocumentSchema, doc, 'trust document'), signers);
}
const bytes = (env: Envelope): Buffer => Buffer.from(JSON.stringify(env));
/** Version `version` as `trust rotate` signs it: the previous root and its own. */
const link = (version: number): Buffer => bytes(envelope(trustDoc(version), [root(version - 1), root(version)]));

describe('trust chain walk', () => {
  let dir: string;
  let store: TrustStore;
  let chain: TrustChain;
  let events: RolloutEvent[];
  let walks: boolean[];
  let walked: () => Promise<boolean>;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-chain-'));
    await mkdir(join(dir, 'state'));
    await writeFile(join(dir, 'trust.json'), JSON.stringify(trustDoc(1)));
    store = new TrustStore({ provisionedPath: join(dir, 'trust.json'), stateDir: join(dir, 'state'), logger });
    await store.load();
    const bus = new RolloutEvents(logger);
    events = [];
    bus.on((e) => events.push(e));
    walks = [];
    let waiting: ((accepted: boolean) => void) | undefined;
    walked = () => new Promise((resolve) => (waiting = resolve));
    chain = new TrustChain({
      store, events: bus, topicRoot: ROOT, logger, skipGraceMs: GRACE_MS,
      onWalked: (accepted) => {
        walks.push(accepted);
        waiting?.(accepted);
      },
    });
    chain.start();
  });

  afterEach(async () => {
    vi.useRealTimers();
    await chain.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const persistedVersion = async (): Promise<number> => (JSON.parse(await readFile(join(dir, 'state', 'trust.json'), 'utf8')) as TrustDocument).version;
  const trustEvents = (): string[] =>
    events.map((e) => {
      if (e.type === 'trust.loaded') return `loaded v${e.version}`;
      if (e.type === 'trust.updated') return `updated v${e.version} from ${e.topic}`;
      if (e.type === 'trust.rejected') return `rejected at v${e.current.version}: ${e.error}`;
      return e.type;
    });

  it('names the versioned topics and parses them back', () => {
    expect(topics.trustVersion(ROOT, 12)).toBe('r/trust/12');
    expect(topics.trustVersions('acme/ef')).toBe('acme/ef/trust/+');
    expect(parseTopic(ROOT, 'r/trust/12')).toEqual({ kind: 'trust-version', version: 12 });
    expect(parseTopic(ROOT, 'r/trust')).toEqual({ kind: 'trust' });
    for (const bad of ['r/trust/0', 'r/trust/012', 'r/trust/-1', 'r/trust/1.5', 'r/trust/x', 'r/trust/9007199254740993', 'r/trust/2/3']) {
      expect(parseTopic(ROOT, bad), bad).toBeUndefined();
    }
    expect(() => topics.trustVersion(ROOT, 0)).toThrow(/trust version 0 must be an integer >= 1/);
  });

  it('accepts v2 then v3 from v1, whatever order they arrive in, and persists each before the next', async () => {
    chain.offerVersion(3, link(3));
    expect(chain.walking).toBe(true);
    expect(await walked()).toBe(false); // v3 alone is not next: nothing happens
    expect(store.current.version).toBe(1);
    chain.offerVersion(2, link(2));
    expect(await walked()).toBe(true);
    expect(chain.walking).toBe(false);
    expect(store.current.version).toBe(3);
    expect(await persistedVersion()).toBe(3);
    expect(trustEvents()).toEqual(['loaded v1', 'updated v2 from r/trust/2', 'updated v3 from r/trust/3']);
    // The broker replays every version on the next subscription: repeats are silent.
    chain.offerVersion(2, link(2));
    chain.offerVersion(3, link(3));
    chain.offerHead(link(3));
    expect(events).toHaveLength(3);
  });

  it('walks to the version {root}/trust names when the links are there, without reporting a skip', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    // The head first: a broker need not deliver two filters' retained messages in order.
    chain.offerHead(link(4));
    expect(await walked()).toBe(false);
    chain.offerVersion(2, link(2));
    chain.offerVersion(3, link(3));
    chain.offerVersion(4, link(4));
    expect(await walked()).toBe(true);
    expect(store.current.version).toBe(4);
    vi.advanceTimersByTime(GRACE_MS * 2);
    expect(trustEvents()).toEqual(['loaded v1', 'updated v2 from r/trust/2', 'updated v3 from r/trust/3', 'updated v4 from r/trust/4']);
  });

  it('never accepts a version that skips: v3 without v2 waits, and a skipping {root}/trust is reported after the grace period', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    chain.offerVersion(3, link(3));
    await walked();
    // Signed by the current root too: still not current+1.
    chain.offerHead(bytes(envelope(trustDoc(3), [root(1), root(3)])));
    await walked();
    expect(store.current.version).toBe(1);
    vi.advanceTimersByTime(GRACE_MS - 10);
    expect(trustEvents()).toEqual(['loaded v1']);
    vi.advanceTimersByTime(20);
    expect(trustEvents()).toEqual([
      'loaded v1',
      'rejected at v1: r/trust: trust version 3 skips past the current version 1; only version 2 is accepted, and nothing arrived on r/trust/2 to walk the chain (publish every version with `edgefleet trust rotate --publish`)',
    ]);
    // Reported once.
    vi.advanceTimersByTime(GRACE_MS * 2);
    expect(events).toHaveLength(2);
    // The missing link, when it comes, completes the walk and clears the problem.
    chain.offerVersion(2, link(2));
    expect(await walked()).toBe(true);
    expect(store.current.version).toBe(3);
    expect(events.at(-1)).toMatchObject({ type: 'trust.updated', version: 3, topic: 'r/trust/3' });
  });

  it('a refused {root}/trust does not hide a later one that skips: that is reported too', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    chain.offerHead(bytes(envelope(trustDoc(2), [root(2)])));
    await walked();
    expect(events.at(-1)).toMatchObject({ type: 'trust.rejected', error: expect.stringMatching(/^r\/trust: .*current root \(trust v1\)/) });
    chain.offerHead(link(3));
    await walked();
    vi.advanceTimersByTime(GRACE_MS);
    expect(events.at(-1)).toMatchObject({ type: 'trust.rejected', error: expect.stringMatching(/^r\/trust: trust version 3 skips past the current version 1; .*nothing arrived on r\/trust\/2/) });
  });

  it('stops at a bad link, reports why, goes no further, and resumes when a good copy arrives', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    // v2's document changed after signing: its rollout key swapped for an attacker's.
    const good = envelope(trustDoc(2), [root(1), root(2)]);
    const forged = { ...trustDoc(2), roles: { ...trustDoc(2).roles, rollout: trustDoc(5).roles.rollout }, keys: { ...trustDoc(2).keys, ...trustDoc(5).keys } };
    const tampered = { ...good, payload: encodeDocument(trustDocumentSchema, forged, 'trust document').toString('base64') };
    chain.offerVersion(3, link(3));
    chain.offerVersion(2, bytes(tampered));
    chain.offerHead(link(3));
    expect(await walked()).toBe(false);
    expect(store.current.version).toBe(1);
    await expect(readFile(join(dir, 'state', 'trust.json'))).rejects.toThrow(/ENOENT/);
    expect(trustEvents()).toEqual(['loaded v1', expect.stringMatching(/^rejected at v1: r\/trust\/2: .*current root \(trust v1\)/)]);
    // The head beyond the bad link is not blamed on a missing one: the refusal already says why.
    vi.advanceTimersByTime(GRACE_MS * 2);
    expect(events).toHaveLength(2);

    chain.offerVersion(2, bytes(good));
    expect(await walked()).toBe(true);
    expect(store.current.version).toBe(3);
    expect(trustEvents().slice(2)).toEqual(['updated v2 from r/trust/2', 'updated v3 from r/trust/3']);
  });

  it('refuses a link signed by the new root only, and one whose document is not the version its topic says', async () => {
    chain.offerVersion(2, bytes(envelope(trustDoc(2), [root(2)])));
    await walked();
    expect(events.at(-1)).toMatchObject({ type: 'trust.rejected', current: { version: 1 }, error: expect.stringMatching(/^r\/trust\/2: .*current root \(trust v1\)/) });
    // Properly signed version 2, but retained on r/trust/3 (and nothing on r/trust/2).
    chain.offerVersion(3, link(2));
    chain.offerHead(link(2));
    await walked();
    // The head (a proper v2) is taken; the link on r/trust/3 is then refused for what it carries.
    expect(store.current.version).toBe(2);
    expect(events.at(-2)).toMatchObject({ type: 'trust.updated', version: 2, topic: 'r/trust' });
    expect(events.at(-1)).toMatchObject({ type: 'trust.rejected', current: { version: 2 }, error: 'r/trust/3: trust version 2 is not newer than the current version 2; only version 3 is accepted' });
  });

  it('keeps only versions within maxAhead and maxPendingBytes of the current one, the lowest first', async () => {
    const bus = new RolloutEvents(logger);
    const accepted: number[] = [];
    bus.on((e) => e.type === 'trust.updated' && accepted.push(e.version));
    let done: (() => void) | undefined;
    const twoLinks = Math.max(...[2, 3, 4].map((v) => link(v).length)) * 2 + 10;
    const bounded = new TrustChain({ store, events: bus, topicRoot: ROOT, logger, maxAhead: 3, maxPendingBytes: twoLinks, onWalked: () => done?.() });
    const offer = (version: number): Promise<void> => {
      const walkEnds = new Promise<void>((resolve) => (done = resolve));
      bounded.offerVersion(version, link(version));
      return walkEnds;
    };
    try {
      await offer(4);
      await offer(3);
      bounded.offerVersion(5, link(5)); // beyond current+3: dropped, nothing to walk
      expect(bounded.walking).toBe(false);
      // Two links fill the bytes: 2 makes 4 give way.
      await offer(2);
      expect(accepted).toEqual([2, 3]);
      // Both dropped versions come again (the next subscription replays them) and are taken.
      await offer(4);
      await offer(5);
      expect(accepted).toEqual([2, 3, 4, 5]);
    } finally {
      await bounded.stop();
    }
  });

  it('stops the walk at a version that cannot be saved, leaving the trust in force, and tries again on the next message', async () => {
    const state = join(dir, 'state');
    await rm(state, { recursive: true });
    await writeFile(state, 'not a directory'); // the atomic write's temp file cannot be made
    chain.offerVersion(2, link(2));
    chain.offerVersion(3, link(3));
    expect(await walked()).toBe(false);
    expect(store.current.version).toBe(1);
    expect(events.at(-1)).toMatchObject({ type: 'trust.rejected', current: { version: 1 }, error: expect.stringMatching(/^r\/trust\/2: trust version 2 could not be saved: /) });
    await rm(state);
    await mkdir(state);
    chain.offerVersion(3, link(3));
    expect(await walked()).toBe(true);
    expect(store.current.version).toBe(3);
  });
});
