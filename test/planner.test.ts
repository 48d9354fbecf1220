import { describe, expect, it } from 'vitest';
import { plan, type CurrentState, type DesiredVersion } from '../agent/rollout/planner.js';

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

  it('upgrades: fetch and switch before unloading, and keeps the previous version on disk', () => {
    const current: CurrentState = { serving: [{ name: 'mnist', version: 2, isDefault: true }], onDisk: [disk('mnist', 1), disk('mnist', 2)], blocked: [], labels: {} };
    expect(plan([d('mnist', 3)], current).map((s) => s.kind)).toEqual(['fetch', 'activate', 'unload', 'prune']);
    expect(plan([d('mnist', 3)], current).at(-1)).toEqual({ kind: 'prune', name: 'mnist', keep: [2, 3] });
  });

  it('after the switch, keeps the version served before rather than the newest other one', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 3, isDefault: true }], onDisk: [disk('m', 1), disk('m', 2), disk('m', 3)], blocked: [], labels: {}, previous: { m: 1 } };
    expect(plan([d('m', 3)], current)).toEqual([{ kind: 'prune', name: 'm', keep: [1, 3] }]);
  });

  it('rolls back to a version still on disk without fetching it', () => {
    const current: CurrentState = { serving: [{ name: 'mnist', version: 3, isDefault: true }], onDisk: [disk('mnist', 2), disk('mnist', 3)], blocked: [], labels: {} };
    expect(plan([d('mnist', 2)], current)).toEqual([
      { kind: 'activate', name: 'mnist', version: 2, sha256: d('mnist', 2).sha256, makeDefault: true },
      { kind: 'unload', name: 'mnist', version: 3 },
    ]);
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

  it('makes a version that serves but is not the default the default', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 2, isDefault: false }, { name: 'm', version: 3, isDefault: true }], onDisk: [disk('m', 2), disk('m', 3)], blocked: [], labels: {} };
    expect(plan([d('m', 2)], current)).toEqual([
      { kind: 'activate', name: 'm', version: 2, sha256: d('m', 2).sha256, makeDefault: true },
      { kind: 'unload', name: 'm', version: 3 },
    ]);
  });

  it('keeps the old version serving when the only listed version is blocked', () => {
    const current: CurrentState = { serving: [{ name: 'm', version: 2, isDefault: true }], onDisk: [disk('m', 2)], blocked: [{ name: 'm', version: 3 }], labels: {} };
    expect(plan([d('m', 3)], current)).toEqual([]);
  });

  it('skips blocked versions and unloads models no longer listed', () => {
    const current: CurrentState = { serving: [{ name: 'old', version: 1, isDefault: true }], onDisk: [disk('old', 1)], blocked: [{ name: 'm', version: 5 }], labels: { old: { stable: 1 } } };
    expect(plan([d('m', 5)], current)).toEqual([
      { kind: 'label', name: 'old', labels: {} },
      { kind: 'unload', name: 'old', version: 1 },
    ]);
  });
});
