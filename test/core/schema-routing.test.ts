import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { sql, type Kysely, type Transaction } from 'kysely';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, readCache } from '../support/fixtures.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';
import { capturingLogger, type LogLine } from '../support/logger.js';

const SCHEMAS = ['public', 'tenant_a', 'tenant_b'] as const;

let database: TestDatabase;
/** Outbox of the writers, whose transactions set their own search_path. */
let writer: SearchOutbox;
/** Outbox of the drainer, on a pool whose sessions keep the server's default search_path. */
let drainer: SearchOutbox;
let logLines: LogLine[];

// Every test gets a fresh database, because some drop a tenant schema and
// the migrations table would still record that schema's cache as created.
beforeEach(async () => {
  database = await createTestDatabase('schema_routing');
  writer = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await writer.migrate({ cacheSchemas: [...SCHEMAS] });
  for (const schema of SCHEMAS) await createFixtureTables(database.db, schema);
  logLines = [];
  drainer = createSearchOutbox({
    db: database.connect({ max: 2 }),
    indexes: FIXTURE_INDEXES,
    dispatcher: 'none',
    logger: capturingLogger(logLines),
  });
});

afterEach(async () => {
  await database.destroy();
});

/** Runs `callback` in a transaction whose search_path is `searchPath`, as a tenant-routing application does. */
async function inTenant<T>(searchPath: string, callback: (trx: Transaction<any>) => Promise<T>): Promise<T> {
  return database.db.transaction().execute(async (trx) => {
    await sql`SELECT set_config('search_path', ${searchPath}, true)`.execute(trx);
    return callback(trx);
  });
}

/** Inserts a site, a virtual chassis and a device through unqualified table names, so the search_path picks the schema. */
async function insertTenantObjects(trx: Kysely<any>, label: string): Promise<void> {
  await trx.insertInto('site').values({ ...fullSite(1, `Site of ${label}`), custom_field_data: '{"code": "x1"}' }).execute();
  await trx.insertInto('site').values({ id: 2, name: `Second site of ${label}` }).execute();
  await trx.insertInto('virtual_chassis').values({ id: 1, name: `stack of ${label}` }).execute();
  await trx.insertInto('device').values({ id: 1, name: `device of ${label}`, site_id: 1, virtual_chassis_id: 1 }).execute();
}

async function readOutboxSchemas(db: Kysely<any>): Promise<string[]> {
  const result = await sql<{ target_schema: string }>`
    SELECT target_schema FROM search_outbox.outbox ORDER BY id
  `.execute(db);
  return result.rows.map((row) => row.target_schema);
}

async function readSearchPath(db: Kysely<any>): Promise<string> {
  const result = await sql<{ search_path: string }>`SHOW search_path`.execute(db);
  return result.rows[0]?.search_path ?? '';
}

describe('schema routing', () => {
  test('rebuilds each tenant cache in its own schema', async () => {
    // The same ids exist in every schema with different names, so a row
    // read from the wrong schema shows up as a wrong value.
    await insertTenantObjects(database.db, 'public');
    await inTenant('tenant_a', async (trx) => {
      await insertTenantObjects(trx, 'tenant A');
      await writer.mark(trx, 'dcim.site', [1, 2]);
      await writer.mark(trx, 'dcim.virtualchassis', 1);
      await writer.mark(trx, 'dcim.device', 1);
    });
    await inTenant('tenant_b, public', async (trx) => {
      await insertTenantObjects(trx, 'tenant B');
      await writer.mark(trx, 'dcim.site', [1, 2]);
      await writer.mark(trx, 'dcim.device', 1);
    });

    expect(await readSearchPath(drainer.db)).toBe('"$user", public');
    expect(await readOutboxSchemas(database.db)).toEqual([
      'tenant_a',
      'tenant_a',
      'tenant_a',
      'tenant_a',
      'tenant_b',
      'tenant_b',
      'tenant_b',
    ]);

    const summary = await drainer.drain();

    expect(summary.rebuilt).toBe(7);
    expect(await readCache(database.db, 'tenant_a')).toContain('dcim.site|1|name|str|Site of tenant A|100');
    expect(await readCache(database.db, 'tenant_a')).toContain('dcim.device|1|virtual_chassis|str|stack of tenant A|200');
    expect(await readCache(database.db, 'tenant_b')).toContain('dcim.device|1|virtual_chassis|str|stack of tenant B|200');
    expect(await readSortedCache(database.db, 'tenant_a')).toEqual(
      await expectedCacheLines(database.db, { schema: 'tenant_a' }),
    );
    expect(await readSortedCache(database.db, 'tenant_b')).toEqual(
      await expectedCacheLines(database.db, { schema: 'tenant_b', objectTypes: ['dcim.site', 'dcim.device'] }),
    );
    expect(await readCache(database.db, 'public')).toEqual([]);
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('explicit schema option overrides the search_path', async () => {
    await database.db.transaction().execute(async (trx) => {
      await trx.withSchema('tenant_b').insertInto('site').values({ id: 5, name: 'Explicit B five' }).execute();
      await writer.mark(trx, 'dcim.site', 5, { schema: 'tenant_b' });
    });
    await inTenant('tenant_a', async (trx) => {
      await trx.insertInto('site').values({ id: 6, name: 'Tenant A six' }).execute();
      await trx.withSchema('tenant_b').insertInto('site').values({ id: 6, name: 'Explicit B six' }).execute();
      await writer.mark(trx, 'dcim.site', 6, { schema: 'tenant_b' });
    });

    expect(await readOutboxSchemas(database.db)).toEqual(['tenant_b', 'tenant_b']);

    await drainer.drain();

    expect(await readCache(database.db, 'tenant_b')).toEqual([
      'dcim.site|5|name|str|Explicit B five|100',
      'dcim.site|6|name|str|Explicit B six|100',
    ]);
    expect(await readCache(database.db, 'tenant_a')).toEqual([]);
    expect(await readCache(database.db, 'public')).toEqual([]);
  });
});

describe('dropped between mark and drain', () => {
  async function markBothTenants(): Promise<void> {
    await inTenant('tenant_a', async (trx) => {
      await insertTenantObjects(trx, 'tenant A');
      await writer.mark(trx, 'dcim.site', [1, 2]);
      await writer.mark(trx, 'dcim.virtualchassis', 1);
    });
    await inTenant('tenant_b', async (trx) => {
      await insertTenantObjects(trx, 'tenant B');
      await writer.mark(trx, 'dcim.site', [1, 2]);
    });
  }

  test('tenant schema is skipped with a warning', async () => {
    await markBothTenants();
    await sql`DROP SCHEMA tenant_a CASCADE`.execute(database.db);

    const summary = await drainer.drain();

    expect(summary.claimed).toBe(5);
    expect(summary.skipped).toBe(3);
    expect(summary.rebuilt).toBe(2);
    expect(summary.failed).toBe(0);
    expect(logLines).toContainEqual(
      expect.objectContaining({ level: 'warn', message: expect.stringContaining('tenant_a') }),
    );
    expect(await readSortedCache(database.db, 'tenant_b')).toEqual(
      await expectedCacheLines(database.db, { schema: 'tenant_b', objectTypes: ['dcim.site'] }),
    );
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('source table is skipped with a warning', async () => {
    await markBothTenants();
    await sql`DROP TABLE tenant_a.site CASCADE`.execute(database.db);

    const summary = await drainer.drain();

    expect(summary.claimed).toBe(5);
    expect(summary.skipped).toBe(2);
    expect(summary.rebuilt).toBe(3);
    expect(summary.failed).toBe(0);
    expect(logLines).toContainEqual(
      expect.objectContaining({ level: 'warn', message: expect.stringContaining('tenant_a.site') }),
    );
    expect(await readCache(database.db, 'tenant_a')).toEqual(['dcim.virtualchassis|1|name|str|stack of tenant A|100']);
    expect(await readSortedCache(database.db, 'tenant_b')).toEqual(
      await expectedCacheLines(database.db, { schema: 'tenant_b', objectTypes: ['dcim.site'] }),
    );
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('tenant schema blocks no later batch', async () => {
    await markBothTenants();
    await sql`DROP SCHEMA tenant_a CASCADE`.execute(database.db);

    const summary = await drainer.drain({ batchSize: 1 });

    expect(summary.batches).toBe(5);
    expect(summary.skipped).toBe(3);
    expect(summary.rebuilt).toBe(2);
    expect(await countOutbox(database.db)).toBe(0);
  });
});
