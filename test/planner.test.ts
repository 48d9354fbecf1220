import { describe, expect, it } from 'vitest';
import { plan, stillNeeded, type CurrentState, type DesiredVersion, type Step } from '../agent/rollout/planner.js';

const empty: CurrentState = { serving: [], onDisk: [], blocked: [], labels: {} };
const d = (name: string, version: number, labels: string[] = []): DesiredVersion => ({ name, version, sha256: `${name}${version}`.padEnd(64, '0'), labels });
const disk = (name: string, version: number): { name: string; version: number; sha256: string } => ({ name, version, sha256: `${name}${version}`.padEnd(64, '0') });

describe('rollout planner', () => {
  it('fetches, activates and labels a first version', () => {
    expect(plan([d('mnist', 3, ['stable'])], empty)).toEqual([
      { kind: 'fetch', name: 'mnist', version: 3, sha256: d('mnist', 3).sha256 },
      { kind: 'activate', name: 'mnist', version: 3, sha256: d('mnist', 3).sha256, makeDefault: true },
      { kind: 'label', name: 'mnist', labels: { stable: 3 } },
    ]);
  });

  it('upgrades: fetch and switch first, unload only once the new version serves, and keep the previous version on disk', () => {
    const current: CurrentState = { serving: [{ name: 'mnist', version: 2, isDefault: true }], onDisk: [disk('mnist', 1), disk('mnist', 2)], blocked: [], labels: {} };
    expect(plan([d('mnist', 3)], current).map((s) => s.kind)).toEqual(['fetch', 'activate', 'prune']);
    expect(plan([d('mnist', 3)], current).at(-1)).toEqual({ kind: 'prune', name: 'mnist', keep: [2, 3] });
    // Version 3 is in and switched to: now version 2 goes (its file stays, for a rollback).
    const switched: CurrentState = { ...current, serving: [{ name: 'mnist', version: 2, isDefault: false }, { name: 'mnist', version: 3, isDefault: true }], onDisk: [disk('mnist', 2), disk('mnist', 3)] };
    expect(plan([d('mnist', 3)], switched)).toEqual([{ kind: 'unload', name: 'mnist', version: 2 }]);
  });

  it('after the switch, keeps the version served before rather than the newest other one', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 3, isDefault: true }], onDisk: [disk('m', 1), disk('m', 2), disk('m', 3)], blocked: [], labels: {}, previous: { m: 1 } };
    expect(plan([d('m', 3)], current)).toEqual([{ kind: 'prune', name: 'm', keep: [1, 3] }]);
  });

  it('rolls back to a version still on disk without fetching it', () => {
    const current: CurrentState = { serving: [{ name: 'mnist', version: 3, isDefault: true }], onDisk: [disk('mnist', 2), disk('mnist', 3)], blocked: [], labels: {} };
    expect(plan([d('mnist', 2)], current)).toEqual([{ kind: 'activate', name: 'mnist', version: 2, sha256: d('mnist', 2).sha256, makeDefault: true }]);
    const switched: CurrentState = { ...current, serving: [{ name: 'mnist', version: 2, isDefault: true }, { name: 'mnist', version: 3, isDefault: false }] };
    expect(plan([d('mnist', 2)], switched)).toEqual([{ kind: 'unload', name: 'mnist', version: 3 }]);
  });

  it('fetches again when the file on disk is a different artifact', () => {
    const current: CurrentState = { ...empty, onDisk: [{ name: 'mnist', version: 2, sha256: 'f'.repeat(64) }] };
    expect(plan([d('mnist', 2)], current)[0]?.kind).toBe('fetch');
  });

  it('serves several versions of one name, the highest by default, with labels', () => {
    const steps = plan([d('m', 1, ['stable']), d('m', 2, ['canary'])], empty);
    expect(steps.filter((s) => s.kind === 'activate')).toEqual([
      { kind: 'activate', name: 'm', version: 1, sha256: d('m', 1).sha256, makeDefault: false },
      { kind: 'activate', name: 'm', version: 2, sha256: d('m', 2).sha256, makeDefault: true },
    ]);
    expect(steps.at(-1)).toEqual({ kind: 'label', name: 'm', labels: { stable: 1, canary: 2 } });
  });

  it('does nothing when the device already matches', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 2, isDefault: true }], onDisk: [disk('m', 1), disk('m', 2)], blocked: [], labels: { m: { stable: 2 } } };
    expect(plan([d('m', 2, ['stable'])], current)).toEqual([]);
  });

  it('makes a version that serves but is not the default the default, then unloads the other', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 2, isDefault: false }, { name: 'm', version: 3, isDefault: true }], onDisk: [disk('m', 2), disk('m', 3)], blocked: [], labels: {} };
    expect(plan([d('m', 2)], current)).toEqual([{ kind: 'activate', name: 'm', version: 2, sha256: d('m', 2).sha256, makeDefault: true }]);
    const switched: CurrentState = { ...current, serving: [{ name: 'm', version: 2, isDefault: true }, { name: 'm', version: 3, isDefault: false }] };
    expect(plan([d('m', 2)], switched)).toEqual([{ kind: 'unload', name: 'm', version: 3 }]);
  });

  it('keeps the old version serving when the only listed version is blocked', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 2, isDefault: true }], onDisk: [disk('m', 2)], blocked: [{ name: 'm', version: 3 }], labels: {} };
    expect(plan([d('m', 3)], current)).toEqual([]);
  });

  it('unloads a model no longer listed, and takes its labels off, once the listed one serves', () => {
    const current: CurrentState = { serving: [{ name: 'old', version: 1, isDefault: true }], onDisk: [disk('old', 1)], blocked: [], labels: { old: { stable: 1 } } };
    // While the new model is fetched and switched in, the old one keeps serving with its labels.
    expect(plan([d('m', 5)], current)).toEqual([
      { kind: 'fetch', name: 'm', version: 5, sha256: d('m', 5).sha256 },
      { kind: 'activate', name: 'm', version: 5, sha256: d('m', 5).sha256, makeDefault: true },
    ]);
    const served: CurrentState = { ...current, serving: [...current.serving, { name: 'm', version: 5, isDefault: true }], onDisk: [disk('old', 1), disk('m', 5)] };
    expect(plan([d('m', 5)], served)).toEqual([
      { kind: 'label', name: 'old', labels: {} },
      { kind: 'unload', name: 'old', version: 1 },
    ]);
  });

  it('a document that fails unloads nothing: a model no longer listed keeps serving with its labels', () => {
    const current: CurrentState = { serving: [{ name: 'old', version: 1, isDefault: true }], onDisk: [disk('old', 1)], blocked: [{ name: 'm', version: 5 }], labels: { old: { stable: 1 } } };
    expect(plan([d('m', 5)], current)).toEqual([]);
  });

  it('a document that fails in part switches what it can and unloads nothing', () => {
    const current: CurrentState = {
      serving: [{ name: 'a', version: 1, isDefault: true }, { name: 'old', version: 1, isDefault: true }],
      onDisk: [disk('a', 1), disk('old', 1)],
      blocked: [{ name: 'b', version: 1 }],
      labels: { a: { stable: 1 } },
    };
    const desired = [d('a', 2, ['stable']), d('b', 1)];
    expect(plan(desired, current)).toEqual([
      { kind: 'fetch', name: 'a', version: 2, sha256: d('a', 2).sha256 },
      { kind: 'activate', name: 'a', version: 2, sha256: d('a', 2).sha256, makeDefault: true },
      { kind: 'label', name: 'a', labels: { stable: 2 } },
    ]);
    const a2: CurrentState = { ...current, serving: [{ name: 'a', version: 1, isDefault: false }, { name: 'a', version: 2, isDefault: true }, { name: 'old', version: 1, isDefault: true }], onDisk: [disk('a', 1), disk('a', 2), disk('old', 1)], labels: { a: { stable: 2 } } };
    expect(plan(desired, a2)).toEqual([]);
  });

  it('a failing fetch or switch never comes after an unload: unloads only in a plan with nothing left to fetch or switch', () => {
    const serving = [{ name: 'x', version: 1, isDefault: true }, { name: 'y', version: 3, isDefault: true }];
    const cases: [DesiredVersion[], CurrentState][] = [
      [[d('x', 2)], { ...empty, serving, onDisk: [disk('x', 1), disk('y', 3)] }],
      [[d('x', 2), d('z', 1)], { ...empty, serving, onDisk: [disk('x', 1), disk('x', 2), disk('y', 3)] }],
      [[d('x', 1), d('x', 2)], { ...empty, serving, onDisk: [disk('x', 1), disk('x', 2)] }],
      [[d('y', 2)], { ...empty, serving, onDisk: [disk('y', 2), disk('y', 3)] }],
    ];
    for (const [desired, current] of cases) {
      const kinds = plan(desired, current).map((s) => s.kind);
      expect(kinds.some((k) => k === 'fetch' || k === 'activate')).toBe(true);
      expect(kinds).not.toContain('unload');
    }
  });

  it('keeps on disk every version that still serves after a failed document', () => {
    const current: CurrentState = {
      serving: [{ name: 'm', version: 1, isDefault: false }, { name: 'm', version: 2, isDefault: true }],
      onDisk: [disk('m', 1), disk('m', 2), disk('m', 3)],
      blocked: [{ name: 'm', version: 4 }],
      labels: {},
    };
    expect(plan([d('m', 4)], current)).toEqual([{ kind: 'prune', name: 'm', keep: [1, 2] }]);
  });
});

describe('a step in progress when a newer document arrives', () => {
  const fetch = (name: string, version: number): Step => ({ kind: 'fetch', name, version, sha256: d(name, version).sha256 });
  const activate = (name: string, version: number, makeDefault: boolean): Step => ({ kind: 'activate', name, version, sha256: d(name, version).sha256, makeDefault });

  it('a download goes on only while the document lists that version with that artifact', () => {
    expect(stillNeeded(fetch('m', 2), [d('m', 2, ['canary'])])).toBe(true);
    expect(stillNeeded(fetch('m', 2), [d('m', 2), d('m', 3)])).toBe(true);
    // A rollback to version 1, another model, or the same version with another artifact.
    expect(stillNeeded(fetch('m', 2), [d('m', 1)])).toBe(false);
    expect(stillNeeded(fetch('m', 2), [d('other', 2)])).toBe(false);
    expect(stillNeeded(fetch('m', 2), [{ ...d('m', 2), sha256: 'f'.repeat(64) }])).toBe(false);
    expect(stillNeeded(fetch('m', 2), [])).toBe(false);
  });

  it('a switch goes on only while the version is listed and still the one to make the default (or not)', () => {
    expect(stillNeeded(activate('m', 2, true), [d('m', 2, ['stable'])])).toBe(true);
    expect(stillNeeded(activate('m', 2, true), [d('m', 1)])).toBe(false);
    expect(stillNeeded(activate('m', 2, true), [d('m', 2), d('m', 3)])).toBe(false);
    expect(stillNeeded(activate('m', 2, false), [d('m', 2), d('m', 3)])).toBe(true);
    expect(stillNeeded(activate('m', 2, false), [d('m', 2)])).toBe(false);
  });

  it('label, unload and prune steps always finish', () => {
    for (const step of [{ kind: 'label', name: 'm', labels: {} }, { kind: 'unload', name: 'm', version: 1 }, { kind: 'prune', name: 'm', keep: [] }] satisfies Step[]) {
      expect(stillNeeded(step, [])).toBe(true);
    }
  });

  describe('shadow evaluation (section 11)', () => {
    const SHADOW = { sampleRate: 0.5, minSamples: 10, maxDurationS: 60, compare: 'argmax' as const, atol: 1e-4, rtol: 1e-3, minAgreement: 0.9, onTimeout: 'reject' as const };
    const shadowed = (name: string, version: number, shadow = SHADOW): DesiredVersion => ({ ...d(name, version), shadow });

    it('puts the shadow on the switch of a version that replaces another of the same name', () => {
      const current: CurrentState = { serving: [{ name: 'm', version: 1, isDefault: true }], onDisk: [disk('m', 1), disk('m', 2)], blocked: [], labels: {} };
      expect(plan([shadowed('m', 2)], current)[0]).toEqual({ kind: 'activate', name: 'm', version: 2, sha256: d('m', 2).sha256, makeDefault: true, shadow: SHADOW });
    });

    it('ignores it on a first install, and for a version that is not to be the default', () => {
      expect(plan([shadowed('m', 1)], { ...empty, onDisk: [disk('m', 1)] })[0]).toEqual({ kind: 'activate', name: 'm', version: 1, sha256: d('m', 1).sha256, makeDefault: true });
      const current: CurrentState = { serving: [{ name: 'm', version: 2, isDefault: true }], onDisk: [disk('m', 1), disk('m', 2)], blocked: [], labels: {} };
      expect(plan([shadowed('m', 1), d('m', 2)], current)[0]).toEqual({ kind: 'activate', name: 'm', version: 1, sha256: d('m', 1).sha256, makeDefault: false });
    });

    it('a newer document with other shadow settings, or none, abandons the evaluation; the same settings keep it', () => {
      const step: Step = { kind: 'activate', name: 'm', version: 2, sha256: d('m', 2).sha256, makeDefault: true, shadow: SHADOW };
      expect(stillNeeded(step, [shadowed('m', 2)])).toBe(true);
      expect(stillNeeded(step, [shadowed('m', 2, { ...SHADOW, minSamples: 20 })])).toBe(false);
      expect(stillNeeded(step, [d('m', 2)])).toBe(false);
    });
  });
});
