import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    globalSetup: ['./support/global-setup.ts'],
    include: ['**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
