import { defineConfig } from 'vitest/config';

const resultsFile = process.env.SEARCH_OUTBOX_TEST_RESULTS;

export default defineConfig({
  test: {
    globalSetup: ['./support/global-setup.ts'],
    include: ['**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // A JSON report beside the console output lets CI print one total line.
    reporters: resultsFile === undefined ? ['default'] : ['default', 'json'],
    outputFile: resultsFile === undefined ? undefined : { json: resultsFile },
  },
});
