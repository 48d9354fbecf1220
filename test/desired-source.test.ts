import { describe, expect, it } from 'vitest';
import { DesiredSource, FALLBACK_GRACE_MS } from '../agent/rollout/desired-source.js';

const doc = (text: string): Buffer => Buffer.from(text);

describe('DesiredSource', () => {
  it("counts the device's document, else the first configured group's; a zero-length message removes one", () => {
    const source = new DesiredSource(['a', 'b']);
    source.offer({ group: 'b' }, doc('b1'));
    expect(source.counting()?.key).toBe('group:b');
    source.offer({ group: 'a' }, doc('a1'));
    source.offer({ device: 'pi' }, doc('d1'));
    expect(source.counting()?.key).toBe('device');
    source.offer({ device: 'pi' }, doc(''));
    expect(source.counting()?.key).toBe('group:a');
  });

  it('a fallback counts at once when the document in force was seen removed', () => {
    const source = new DesiredSource(['a']);
    source.offer({ group: 'a' }, doc('a1'));
    source.offer({ device: 'pi' }, doc(''));
    expect(source.fallbackWaitMs(source.counting()!, 'device', 1000)).toBe(0);
  });

  it('otherwise waits FALLBACK_GRACE_MS for the document in force, which may come in the meantime', () => {
    const source = new DesiredSource(['a', 'b']);
    source.offer({ group: 'b' }, doc('b1'));
    const b = source.counting()!;
    expect(source.fallbackWaitMs(b, 'group:a', 1000)).toBe(FALLBACK_GRACE_MS);
    expect(source.fallbackWaitMs(b, 'group:a', 1500)).toBe(FALLBACK_GRACE_MS - 500);
    expect(source.fallbackWaitMs(b, 'group:a', 1000 + FALLBACK_GRACE_MS)).toBe(0);
    // The device's own or a higher group's document is no fallback: it never waits.
    source.offer({ device: 'pi' }, doc('d1'));
    expect(source.fallbackWaitMs(source.counting()!, 'group:a', 5000)).toBe(0);
    expect(source.fallbackWaitMs(b, undefined, 5000)).toBe(0);
  });

  it('a group no longer configured has the lowest precedence', () => {
    const source = new DesiredSource(['a']);
    source.offer({ group: 'a' }, doc('a1'));
    expect(source.fallbackWaitMs(source.counting()!, 'group:gone', 0)).toBe(0);
  });
});
