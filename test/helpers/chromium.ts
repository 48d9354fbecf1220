/**
 * Headless Chromium for the dashboard tests: Debian's /usr/bin/chromium (or
 * $CHROMIUM_BIN) driven through playwright-core. Skipped where it is not
 * installed, except under CI, where a missing browser is an error.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** Why a test that needs Chromium is skipped, or false; `test` names it in the reason. */
export function chromiumSkip(test: string): string | false {
  if (existsSync(CHROMIUM_BIN)) return false;
  const reason = `${CHROMIUM_BIN} not found; install chromium to run ${test}`;
  if (process.env.CI) throw new Error(`${reason}; CI is set, so it must run`);
  return reason;
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}
