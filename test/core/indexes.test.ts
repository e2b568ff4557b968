import { createSearchOutbox, defineIndexes, IndexDeclarationError, MigrationError, type SearchIndex } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES } from '../support/fixtures.js';

const SITE: SearchIndex = { objectType: 'dcim.site', table: 'site', fields: [{ name: 'name', weight: 100 }] };

describe('index declarations', () => {
  test('accept the fixture declarations with defaults applied', () => {
    const registry = defineIndexes(FIXTURE_INDEXES);
    const site = registry.get('dcim.site');

    expect(registry.objectTypes).toContain('ipam.prefix');
    expect(site.primaryKey).toBe('id');
    expect(site.keyType).toBe('bigint');
    expect(site.fields[0]).toEqual({ name: 'name', weight: 100, type: 'str', source: { column: 'name' } });
  });

  test.each([
    ['a bad object type', { ...SITE, objectType: 'dcim site' }, /Invalid search index "#0": objectType "dcim site"/],
    ['an unsafe table', { ...SITE, table: 'site; drop' }, /search index "dcim.site": table "site; drop" is not a valid identifier/],
    ['no fields', { ...SITE, fields: [] }, /search index "dcim.site": fields must be a non-empty array/],
    [
      'a negative weight',
      { ...SITE, fields: [{ name: 'name', weight: -1 }] },
      /search index "dcim.site", field "name": weight -1 must be an integer from 0 to 32767/,
    ],
    [
      'an unknown value type',
      { ...SITE, fields: [{ name: 'name', weight: 1, type: 'text' }] },
      /field "name": type "text" must be one of str, int, float, inet, cidr/,
    ],
    [
      'a duplicate field',
      { ...SITE, fields: [{ name: 'name', weight: 1 }, { name: 'name', weight: 2 }] },
      /field "name": the field is declared twice/,
    ],
    [
      'an unsafe source column',
      { ...SITE, fields: [{ name: 'name', weight: 1, source: { column: 'name"--' } }] },
      /field "name": source column "name\\"--" is not a valid identifier/,
    ],
    [
      'an unknown source kind',
      { ...SITE, fields: [{ name: 'name', weight: 1, source: { expression: 'now()' } }] },
      /field "name": source must have one of the keys column, related or json/,
    ],
    [
      'an unsafe related table',
      { ...SITE, fields: [{ name: 'region', weight: 1, source: { related: { foreignKey: 'region_id', table: 'a.b' } } }] },
      /field "region": related table "a.b" is not a valid identifier/,
    ],
    ['an unknown key type', { ...SITE, keyType: 'serial' }, /keyType "serial" must be one of bigint, integer, text, uuid/],
    ['a null field', { ...SITE, fields: [null] }, /field "#0": a field must be an object with a name and a weight, not null/],
    ['a string field', { ...SITE, fields: ['name'] }, /field "#0": a field must be an object .* not "name"/],
    ['a field without a name', { ...SITE, fields: [{ weight: 1 }] }, /field "#0": name undefined must be a letter/],
    ['a numeric display attribute', { ...SITE, display: [5] }, /field "display #0": a display attribute must be a name or an object, not 5/],
    ['a NaN where value', { ...SITE, where: { rank: Number.NaN } }, /where value NaN for column "rank" must be a string, a finite number/],
  ])('reject %s', (_label, declaration, message) => {
    expect(() => defineIndexes([declaration as SearchIndex])).toThrow(IndexDeclarationError);
    expect(() => defineIndexes([declaration as SearchIndex])).toThrow(message);
  });

  test('reject a type declared twice', () => {
    expect(() => defineIndexes([SITE, SITE])).toThrow(/search index "dcim.site": the object type is declared twice/);
  });

  test('need a Kysely instance', () => {
    expect(() => createSearchOutbox({ db: 5 as never, indexes: [SITE] })).toThrow(
      /Invalid options.db: 5 must be a Kysely instance/,
    );
  });

  test('are validated when the outbox is created', () => {
    expect(() => createSearchOutbox({ db: { transaction: () => {} } as never, indexes: [{ ...SITE, fields: [] }] })).toThrow(
      IndexDeclarationError,
    );
  });
});

describe('verify', () => {
  let database: TestDatabase;

  beforeAll(async () => {
    database = await createTestDatabase('verify');
    await createFixtureTables(database.db);
  });

  afterAll(async () => {
    await database.destroy();
  });

  test('rejects a database that is not migrated', async () => {
    const outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });

    await expect(outbox.verify()).rejects.toThrow(MigrationError);
    await expect(outbox.verify()).rejects.toThrow(/has no search-outbox migrations table/);
  });

  test('accepts declarations that match the tables', async () => {
    const outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    await outbox.migrate();

    await expect(outbox.verify()).resolves.toBeUndefined();
  });

  test('names the index and field of a missing column', async () => {
    const outbox = createSearchOutbox({
      db: database.db,
      indexes: [{ ...SITE, fields: [{ name: 'asset_tag', weight: 50 }] }],
    });

    await expect(outbox.verify()).rejects.toThrow(
      /Invalid search index "dcim.site", field "asset_tag": column "asset_tag" does not exist in table "public.site"/,
    );
  });

  test('names a missing related table', async () => {
    const outbox = createSearchOutbox({
      db: database.db,
      indexes: [
        { ...SITE, fields: [{ name: 'group', weight: 1, source: { related: { foreignKey: 'region_id', table: 'site_group' } } }] },
      ],
    });

    await expect(outbox.verify()).rejects.toThrow(/field "group": table "public.site_group" does not exist/);
  });

  test('rejects a schema migrated by newer code', async () => {
    const outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    await sql`INSERT INTO search_outbox.migrations (target_schema, scope, version, name) VALUES ('search_outbox', 'outbox', 99, 'future')`.execute(
      database.db,
    );

    await expect(outbox.verify()).rejects.toThrow(/is at outbox version 99, but this code expects 4; upgrade search-outbox/);
  });
});
