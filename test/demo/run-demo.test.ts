import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemoModel, DEMO_SCHEMA, runDemo, type DemoResult } from '@search-outbox/example-netbox';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { compareRows, computeExpectedRows, readCacheRows } from './netbox-oracle.js';

/** Collects what the demo prints. */
function captureOutput(): { write(text: string): boolean; text(): string } {
  const chunks: string[] = [];
  return {
    write: (text) => {
      chunks.push(text);
      return true;
    },
    text: () => chunks.join(''),
  };
}

describe('runDemo against DATABASE_URL', () => {
  const oracle = computeExpectedRows(buildDemoModel().dataDirectory);
  let database: TestDatabase;
  let first: DemoResult;
  let second: DemoResult;
  let firstOutput: string;

  beforeAll(async () => {
    database = await createTestDatabase('demo_run');
    const output = captureOutput();
    first = await runDemo({ databaseUrl: database.url, output });
    firstOutput = output.text();
    second = await runDemo({ databaseUrl: database.url, output: captureOutput() });
  });

  afterAll(async () => {
    await database?.destroy();
  });

  it('leaves the oracle rows in the demo schema', async () => {
    const cache = await readCacheRows(database.db, DEMO_SCHEMA);
    const difference = compareRows(cache, oracle.rows);
    expect(difference.unexpected).toEqual([]);
    expect(difference.missing).toEqual([]);
  });

  it('uses the given database as it is', () => {
    expect(first.embedded).toBe(false);
    expect(first.database).toContain(database.name);
  });

  it('drains everything the load marked', () => {
    expect(first.drain.claimed).toBe(first.load.outboxRows);
    expect(first.drain.remaining).toBe(0);
    expect(first.drain.failed).toBe(0);
    expect(first.rolledBackOutboxRows).toBe(0);
  });

  it('gives the same result when run again', () => {
    expect(second.drain.claimed).toBe(first.drain.claimed);
    expect(second.types).toEqual(first.types);
    expect(second.searches.map((search) => search.results)).toEqual(first.searches.map((search) => search.results));
  });

  it('prints the rebuilt types and the searches', () => {
    expect(firstOutput).toContain('Cache after the drain, per object type:');
    expect(firstOutput).toMatch(/dcim\.interface\s+1586\s+1586\s+1586/);
    expect(firstOutput).toContain('ipam.prefix #95  prefix: "192.168.0.0/20"');
    expect(firstOutput).toContain('search "Savepoint Rollback Tenant" (partial): 0 results');
  });

  it('finds no trace of the rolled-back tenant', () => {
    const rolledBack = first.searches.find((search) => search.options.query === first.load.rolledBack.name);
    expect(rolledBack?.results).toEqual([]);
  });
});
