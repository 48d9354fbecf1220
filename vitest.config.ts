import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: ['default', './test/summary-reporter.ts'],
    // ONNX Runtime must never phone home, even from test workers.
    env: { ORT_DISABLE_TELEMETRY: '1' },
  },
});
