import { createSearchOutbox, LATEST_VERSIONS, migrate, MigrationError, ValidationError } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { FIXTURE_INDEXES } from '../support/fixtures.js';

let database: TestDatabase | undefined;

afterEach(async () => {
  await database?.destroy();
  database = undefined;
});

async function freshDatabase(): Promise<TestDatabase> {
  database = await createTestDatabase('migrations');
  return database;
}

async function recordedVersions(db: TestDatabase['db'], outboxSchema = 'search_outbox'): Promise<string[]> {
  const result = await sql<{ line: string }>`
    SELECT target_schema || ':' || scope || ':' || version AS line
    FROM ${sql.id(outboxSchema, 'migrations')} ORDER BY 1
  `.execute(db);
  return result.rows.map((row) => row.line);
}

describe('migrate', () => {
  test('installs outbox and cache and records versions', async () => {
    const { db } = await freshDatabase();
    const result = await migrate(db);

    expect(result.applied.map((m) => `${m.schema}:${m.scope}:${m.version}`)).toEqual([
      'search_outbox:outbox:1',
      'search_outbox:outbox:2',
      'search_outbox:outbox:3',
      'search_outbox:outbox:4',
      'public:cache:1',
      'public:cache:2',
      'public:cache:3',
    ]);
    expect(await recordedVersions(db)).toEqual([
      'public:cache:1',
      'public:cache:2',
      'public:cache:3',
      'search_outbox:outbox:1',
      'search_outbox:outbox:2',
      'search_outbox:outbox:3',
      'search_outbox:outbox:4',
    ]);
    const tables = await sql<{ name: string }>`
      SELECT to_regclass('search_outbox.outbox')::text AS name
      UNION ALL SELECT to_regclass('public.search_cache')::text
    `.execute(db);
    expect(tables.rows.map((row) => row.name)).toEqual(['search_outbox.outbox', 'search_cache']);
  });

  test('applies nothing the second time', async () => {
    const { db } = await freshDatabase();
    await migrate(db);
    const second = await migrate(db);

    expect(second.applied).toEqual([]);
  });

  test('installs into a chosen outbox schema and cache schemas', async () => {
    const { db } = await freshDatabase();
    await migrate(db, { outboxSchema: 'my_outbox', cacheSchemas: ['tenant_a', 'tenant_b'] });

    expect(await recordedVersions(db, 'my_outbox')).toEqual([
      'my_outbox:outbox:1',
      'my_outbox:outbox:2',
      'my_outbox:outbox:3',
      'my_outbox:outbox:4',
      'tenant_a:cache:1',
      'tenant_a:cache:2',
      'tenant_a:cache:3',
      'tenant_b:cache:1',
      'tenant_b:cache:2',
      'tenant_b:cache:3',
    ]);
    const present = await sql<{ present: boolean }>`
      SELECT to_regclass('tenant_b.search_cache') IS NOT NULL AS present
    `.execute(db);
    expect(present.rows[0]?.present).toBe(true);
  });

  test('concurrent runs apply each migration once', async () => {
    const { connect } = await freshDatabase();
    const pools = [connect({ max: 1 }), connect({ max: 1 }), connect({ max: 1 }), connect({ max: 1 })];
    const results = await Promise.all(pools.map((pool) => migrate(pool)));

    const appliedTotal = results.reduce((total, result) => total + result.applied.length, 0);
    expect(appliedTotal).toBe(LATEST_VERSIONS.outbox + LATEST_VERSIONS.cache);
    expect(await recordedVersions(pools[0]!)).toHaveLength(LATEST_VERSIONS.outbox + LATEST_VERSIONS.cache);
  });

  test('rejects a database migrated by newer code', async () => {
    const { db } = await freshDatabase();
    await migrate(db);
    await sql`
      INSERT INTO search_outbox.migrations (target_schema, scope, version, name)
      VALUES ('search_outbox', 'outbox', ${LATEST_VERSIONS.outbox + 1}, 'from_the_future')
    `.execute(db);

    const attempt = migrate(db);
    await expect(attempt).rejects.toThrow(MigrationError);
    await expect(attempt).rejects.toThrow(/at version 5, but this version of search-outbox knows versions up to 4/);
  });

  test('reinstalls the cache of a dropped and re-created schema', async () => {
    const { db } = await freshDatabase();
    await migrate(db, { cacheSchemas: ['tenant_a'] });
    await sql`DROP SCHEMA tenant_a CASCADE`.execute(db);
    await sql`CREATE SCHEMA tenant_a`.execute(db);
    const again = await migrate(db, { cacheSchemas: ['tenant_a'] });

    expect(again.applied.map((m) => `${m.schema}:${m.scope}:${m.version}`)).toEqual([
      'tenant_a:cache:1',
      'tenant_a:cache:2',
      'tenant_a:cache:3',
    ]);
    const present = await sql<{ present: boolean }>`
      SELECT to_regclass('tenant_a.search_cache') IS NOT NULL AS present
    `.execute(db);
    expect(present.rows[0]?.present).toBe(true);
  });

  test('creates the trigram index when pg_trgm is available', async () => {
    const { db } = await freshDatabase();
    await migrate(db);
    const index = await sql<{ present: boolean }>`
      SELECT to_regclass('public.search_cache_value_trgm_idx') IS NOT NULL AS present
    `.execute(db);

    expect(index.rows[0]?.present).toBe(true);
  });

  test('rejects an unsafe schema name', async () => {
    const { db } = await freshDatabase();
    const attempt = migrate(db, { cacheSchemas: ['public; DROP TABLE x'] });

    await expect(attempt).rejects.toThrow(ValidationError);
    await expect(attempt).rejects.toThrow(/cacheSchemas\[0\]: "public; DROP TABLE x" is not a valid identifier/);
  });

  test('outbox.migrate uses the outbox schema', async () => {
    const { db } = await freshDatabase();
    const outbox = createSearchOutbox({ db, indexes: FIXTURE_INDEXES, outboxSchema: 'custom_outbox' });
    await outbox.migrate();

    expect(await recordedVersions(db, 'custom_outbox')).toContain('custom_outbox:outbox:4');
  });
});
