import { describe, expect, it } from 'vitest';
import { CoalescedPass } from '../agent/coalesce.js';

/** A pass that counts its runs and ends only when released. */
function gatedPass(): { pass: () => Promise<void>; runs: () => number; release: () => void } {
  let runs = 0;
  let open: (() => void) | undefined;
  return {
    pass: () => {
      runs++;
      return new Promise<void>((resolve) => (open = resolve));
    },
    runs: () => runs,
    release: () => open?.(),
  };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('CoalescedPass', () => {
  it('runs one pass at a time; every call during a pass shares one more pass', async () => {
    const g = gatedPass();
    const c = new CoalescedPass(g.pass);
    const first = c.run();
    const joined = [c.run(), c.run(), c.run()];
    expect(joined.every((p) => p === first)).toBe(true);
    expect(g.runs()).toBe(1);
    g.release();
    await tick();
    expect(g.runs()).toBe(2); // the extra pass the three calls asked for
    g.release();
    await first;
    expect(g.runs()).toBe(2);
    expect(c.running).toBeUndefined();
  });

  it('starts afresh once the last pass has ended, and more() false stops the extra pass', async () => {
    const g = gatedPass();
    let more = true;
    const c = new CoalescedPass(g.pass, () => more);
    const first = c.run();
    g.release();
    await first;
    const second = c.run();
    expect(second).not.toBe(first);
    void c.run();
    more = false;
    g.release();
    await second;
    expect(g.runs()).toBe(2);
  });

  it('settles a failing pass with its error and runs again on the next call', async () => {
    let fail = true;
    const c = new CoalescedPass(async () => {
      if (fail) throw new Error('disk gone');
    });
    await expect(c.run()).rejects.toThrow('disk gone');
    expect(c.running).toBeUndefined();
    fail = false;
    await expect(c.run()).resolves.toBeUndefined();
  });
});
