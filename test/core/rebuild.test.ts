import { createSearchOutbox, UnknownObjectTypeError, type SearchOutbox } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';

let database: TestDatabase;
let outbox: SearchOutbox;
const SITE_COUNT = 250;

beforeAll(async () => {
  database = await createTestDatabase('rebuild');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
  await insertSites(
    database.db,
    Array.from({ length: SITE_COUNT }, (_, position) => fullSite(position + 1, `Rebuilt ${position + 1}`)),
  );
  await sql`INSERT INTO region (id, name) VALUES (1, 'West'), (2, 'East')`.execute(database.db);
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  await sql`TRUNCATE search_cache, search_outbox.rebuild_progress`.execute(database.db);
});

async function insertStaleRows(): Promise<void> {
  await sql`
    INSERT INTO search_cache (object_type, object_id, field, type, value, weight) VALUES
      ('dcim.site', '1', 'name', 'str', 'Old Name', 100),
      ('dcim.site', '1', 'asset_tag', 'str', 'None', 50),
      ('dcim.site', '9999', 'name', 'str', 'Deleted Long Ago', 100),
      ('dcim.cable', '5', 'label', 'str', 'Undeclared Type', 100)
  `.execute(database.db);
}

describe('rebuild', () => {
  test('rebuilds every declared type from the source tables', async () => {
    const summary = await outbox.rebuild({ chunkSize: 100 });

    const sites = summary.types.find((type) => type.objectType === 'dcim.site');
    expect(sites).toMatchObject({ objects: SITE_COUNT, rows: SITE_COUNT * 7, resumed: false });
    expect(summary.types.find((type) => type.objectType === 'dcim.region')).toMatchObject({ objects: 2, rows: 2 });
    expect(await readCache(database.db)).toHaveLength(SITE_COUNT * 7 + 2);
  });

  test('replaces stale rows and removes undeclared types', async () => {
    await insertStaleRows();
    const summary = await outbox.rebuild({ chunkSize: 100 });

    const cache = await readCache(database.db);
    expect(cache).toContain('dcim.site|1|name|str|Rebuilt 1|100');
    expect(cache.some((line) => line.includes('Old Name'))).toBe(false);
    expect(cache.some((line) => line.includes('asset_tag'))).toBe(false);
    expect(cache.some((line) => line.includes('|9999|'))).toBe(false);
    expect(cache.some((line) => line.startsWith('dcim.cable'))).toBe(false);
    expect(summary.types.find((type) => type.objectType === 'dcim.site')?.staleRowsRemoved).toBe(1);
    expect(summary.undeclaredRowsRemoved).toBe(1);
  });

  test('rebuilds only the chosen types', async () => {
    await insertStaleRows();
    const summary = await outbox.rebuild({ objectTypes: ['dcim.region'] });

    expect(summary.types.map((type) => type.objectType)).toEqual(['dcim.region']);
    const cache = await readCache(database.db);
    expect(cache).toContain('dcim.cable|5|label|str|Undeclared Type|100');
    expect(cache).toContain('dcim.site|1|name|str|Old Name|100');
  });

  test('reports progress per chunk', async () => {
    const progress: string[] = [];
    await outbox.rebuild({
      objectTypes: ['dcim.site'],
      chunkSize: 100,
      onProgress: (update) => progress.push(`${update.done}/${update.total}`),
    });

    expect(progress).toEqual(['100/250', '200/250', '250/250']);
  });

  test('resumes an interrupted rebuild after its last chunk', async () => {
    const controller = new AbortController();
    const first = await outbox.rebuild({
      objectTypes: ['dcim.site'],
      chunkSize: 100,
      signal: controller.signal,
      onProgress: () => controller.abort(),
    });
    expect(first.aborted).toBe(true);
    expect((await readCache(database.db)).length).toBe(100 * 7);

    const chunks: number[] = [];
    const second = await outbox.rebuild({
      objectTypes: ['dcim.site'],
      chunkSize: 100,
      onProgress: (update) => chunks.push(update.done),
    });

    expect(second.types[0]).toMatchObject({ objects: SITE_COUNT, rows: 150 * 7, resumed: true });
    expect(chunks).toEqual([200, 250]);
    expect((await readCache(database.db)).length).toBe(SITE_COUNT * 7);
  });

  test('restart ignores an interrupted rebuild', async () => {
    const controller = new AbortController();
    await outbox.rebuild({
      objectTypes: ['dcim.site'],
      chunkSize: 100,
      signal: controller.signal,
      onProgress: () => controller.abort(),
    });
    const again = await outbox.rebuild({ objectTypes: ['dcim.site'], chunkSize: 100, restart: true });

    expect(again.types[0]).toMatchObject({ objects: SITE_COUNT, rows: SITE_COUNT * 7, resumed: false });
  });

  test('never leaves a type without rows while it runs', async () => {
    await outbox.rebuild({ objectTypes: ['dcim.site'] });
    let running = true;
    const observed: number[] = [];
    const watcher = (async () => {
      const watcherDb = database.connect({ max: 1 });
      while (running) {
        const count = await sql<{ count: string }>`
          SELECT count(*) AS count FROM search_cache WHERE object_type = 'dcim.site'
        `.execute(watcherDb);
        observed.push(Number(count.rows[0]?.count));
      }
    })();
    for (let round = 0; round < 3; round += 1) {
      await outbox.rebuild({ objectTypes: ['dcim.site'], chunkSize: 10, restart: true });
    }
    running = false;
    await watcher;

    expect(observed.length).toBeGreaterThan(0);
    expect(observed.every((count) => count === SITE_COUNT * 7)).toBe(true);
  });

  test('isolates a failing object and hands it to the drain', async () => {
    await sql`UPDATE site SET custom_field_data = '{"rank": "not a number"}' WHERE id = 120`.execute(database.db);
    try {
      const summary = await outbox.rebuild({ objectTypes: ['dcim.site'], chunkSize: 100 });

      expect(summary.types[0]).toMatchObject({ objects: SITE_COUNT, failed: 1, rows: (SITE_COUNT - 1) * 7 });
      expect((await readCache(database.db)).length).toBe((SITE_COUNT - 1) * 7);
      const marked = await sql<{ object_id: string }>`
        SELECT object_id FROM search_outbox.outbox WHERE object_type = 'dcim.site'
      `.execute(database.db);
      expect(marked.rows.map((row) => row.object_id)).toEqual(['120']);
    } finally {
      await sql`UPDATE site SET custom_field_data = '{}' WHERE id = 120`.execute(database.db);
      await sql`TRUNCATE search_outbox.outbox`.execute(database.db);
    }
  });

  test('rejects an unknown object type by name', async () => {
    const attempt = outbox.rebuild({ objectTypes: ['dcim.cable'] });

    await expect(attempt).rejects.toThrow(UnknownObjectTypeError);
    await expect(attempt).rejects.toThrow(/objectTypes\[0\]: "dcim.cable"/);
  });

  test('rejects a schema without a cache', async () => {
    await sql`CREATE SCHEMA IF NOT EXISTS empty_tenant`.execute(database.db);

    await expect(outbox.rebuild({ schema: 'empty_tenant' })).rejects.toThrow(
      /Schema "empty_tenant" has no search_cache table/,
    );
  });
});
