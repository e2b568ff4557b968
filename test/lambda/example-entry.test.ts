import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrate } from '@search-outbox/core';
import { buildDemoModel, createApplicationTables, loadDemoIndexes } from '@search-outbox/example-netbox';
import type { Context } from 'aws-lambda';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

const PACKAGE_DIRECTORY = fileURLToPath(new URL('../../packages/example-netbox/', import.meta.url));
const INDEXES_FILE = join(PACKAGE_DIRECTORY, 'src/lambda/demo-indexes.json');
// The compiled entry: the same module that the bundles are built from, after tsc.
const ENTRY_MODULE = join(PACKAGE_DIRECTORY, 'dist/lambda/handler.js');

interface EntryModule {
  readonly sqsHandler: (event: unknown, context: Context) => Promise<unknown>;
  readonly scheduleHandler: (event: unknown, context: Context) => Promise<unknown>;
  readonly invokeHandler: (event: unknown, context: Context) => Promise<{ action: string; result: any }>;
}

function lambdaContext(): Context {
  return {
    functionName: 'example-netbox-drainer',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:us-east-1:123456789012:function:example-netbox-drainer',
    memoryLimitInMB: '512',
    awsRequestId: 'request-1',
    logGroupName: '/aws/lambda/example-netbox-drainer',
    logStreamName: 'stream',
    callbackWaitsForEmptyEventLoop: false,
    getRemainingTimeInMillis: () => 60_000,
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
}

describe('embedded demo indexes', () => {
  test('JSON equals loadDemoIndexes()', () => {
    const text = readFileSync(INDEXES_FILE, 'utf8');

    expect(JSON.parse(text)).toEqual(loadDemoIndexes());
    // Byte for byte what scripts/write-lambda-indexes.mjs writes, so that running it changes nothing.
    expect(text).toBe(`${JSON.stringify(loadDemoIndexes(), null, 2)}\n`);
  });
});

describe('example Lambda entry against PostgreSQL', () => {
  let database: TestDatabase;
  let entry: EntryModule;

  beforeAll(async () => {
    database = await createTestDatabase('lambda_example_entry');
    await migrate(database.db, { cacheSchemas: ['public'] });
    await createApplicationTables(database.db, 'public', buildDemoModel().tables);
    vi.stubEnv('DATABASE_URL', database.url);
    vi.stubEnv('DB_SSL', 'disable');
    vi.stubEnv('SEARCH_OUTBOX_QUEUE_URL', undefined);
    entry = (await import(ENTRY_MODULE)) as EntryModule;
  });

  afterAll(async () => {
    vi.unstubAllEnvs();
    await database.destroy();
  });

  test('exports the three handlers', () => {
    expect(typeof entry.sqsHandler).toBe('function');
    expect(typeof entry.scheduleHandler).toBe('function');
    expect(typeof entry.invokeHandler).toBe('function');
  });

  test('rebuild covers every demo type', async () => {
    const response = await entry.invokeHandler({ action: 'rebuild' }, lambdaContext());

    expect(response.action).toBe('rebuild');
    const rebuilt = (response.result.types as { objectType: string }[]).map((type) => type.objectType).sort();
    expect(rebuilt).toEqual(loadDemoIndexes().map((index) => index.objectType).sort());
    expect(response.result.resumable).toBe(false);
  });

  test('status reports an empty outbox', async () => {
    const response = await entry.invokeHandler({ action: 'status' }, lambdaContext());

    expect(response.result.pending).toBe(0);
    expect(response.result.dead).toBe(0);
  });

  test('schedule sweeps an empty outbox', async () => {
    const result = (await entry.scheduleHandler({ 'detail-type': 'Scheduled Event', detail: {} }, lambdaContext())) as {
      drain: { claimed: number };
      status: { pending: number };
    };

    expect(result.drain.claimed).toBe(0);
    expect(result.status.pending).toBe(0);
  });
});
