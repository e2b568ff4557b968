import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';

let database: TestDatabase;
let outbox: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('sites');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await database.destroy();
});

describe('three fully filled sites', () => {
  test('produce seven cache rows each', async () => {
    await outbox.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'First Site'), fullSite(2, 'Second Site'), fullSite(3, 'Third Site')]);
      await outbox.mark(trx, 'dcim.site', [1, 2, 3]);
    });
    const summary = await outbox.drain();

    expect(summary.rebuilt).toBe(3);
    const cache = await readCache(database.db);
    expect(cache).toHaveLength(21);
    for (const id of ['1', '2', '3']) {
      expect(cache.filter((line) => line.startsWith(`dcim.site|${id}|`))).toHaveLength(7);
    }
    expect(cache).toContain('dcim.site|1|name|str|First Site|100');
    expect(cache).toContain('dcim.site|2|comments|str|Comments about Second Site|5000');
  });

  test('search finds 3, 1 and 0 objects', async () => {
    expect(await outbox.search({ query: 'site' })).toHaveLength(3);
    expect(await outbox.search({ query: 'first' })).toHaveLength(1);
    expect(await outbox.search({ query: 'xxxxx' })).toHaveLength(0);
  });

  test('deleting a site removes its rows', async () => {
    await outbox.transaction(async (trx) => {
      await trx.deleteFrom('site').where('id', '=', 2).execute();
      await outbox.markDeleted(trx, 'dcim.site', 2);
    });
    const summary = await outbox.drain();

    expect(summary.removed).toBe(1);
    const cache = await readCache(database.db);
    expect(cache.filter((line) => line.startsWith('dcim.site|2|'))).toHaveLength(0);
    expect(cache).toHaveLength(14);
    expect(await outbox.search({ query: 'site' })).toHaveLength(2);
  });

  test('search results carry field, value and display', async () => {
    await sql`INSERT INTO region (id, name) VALUES (7, 'Europe'); UPDATE site SET region_id = 7 WHERE id = 1`.execute(
      database.db,
    );
    const [result] = await outbox.search({ query: 'first site', lookup: 'exact' });

    expect(result).toEqual({
      objectType: 'dcim.site',
      objectId: '1',
      field: 'name',
      type: 'str',
      value: 'First Site',
      weight: 100,
      display: { status: 'active', region: 'Europe' },
    });
  });
});
