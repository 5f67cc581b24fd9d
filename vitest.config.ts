import { defineConfig } from 'vitest/config';

// The native addon must never be loaded in worker threads: run test files in child processes.
export default defineConfig({
  test: {
    include: ['ts/test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
