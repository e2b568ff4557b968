import {
  createSearchOutbox,
  UnknownObjectTypeError,
  ValidationError,
  type SearchOutbox,
} from '@search-outbox/core';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';

let database: TestDatabase;
let outbox: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('marks');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site, region`.execute(database.db);
});

async function outboxRows(): Promise<string[]> {
  const result = await sql<{ line: string }>`
    SELECT concat_ws('|', target_schema, object_type, object_id, operation) AS line
    FROM search_outbox.outbox ORDER BY id
  `.execute(database.db);
  return result.rows.map((row) => row.line);
}

describe('mark', () => {
  test('coalesces repeated marks in one transaction', async () => {
    await database.db.transaction().execute(async (trx) => {
      await outbox.mark(trx, 'dcim.site', 1);
      await outbox.mark(trx, 'dcim.site', [1, 2, 1]);
      await outbox.mark(trx, 'dcim.site', '2');
    });

    expect(await outboxRows()).toEqual(['public|dcim.site|1|upsert', 'public|dcim.site|2|upsert']);
  });

  test('records a deletion after an update in one transaction', async () => {
    await database.db.transaction().execute(async (trx) => {
      await outbox.mark(trx, 'dcim.site', 5);
      await outbox.markDeleted(trx, 'dcim.site', 5);
    });

    expect(await outboxRows()).toEqual(['public|dcim.site|5|delete']);
  });

  test('keeps one row per transaction across transactions', async () => {
    await outbox.mark(database.db, 'dcim.site', 1);
    await outbox.mark(database.db, 'dcim.site', 1);

    expect(await countOutbox(database.db)).toBe(2);
  });

  test('runs one statement per call whatever the number of ids', async () => {
    const statements: string[] = [];
    const logged = new Kysely<any>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url, max: 1 }) }),
      log: (event) => {
        if (event.level === 'query') statements.push(event.query.sql);
      },
    });
    try {
      const ids = Array.from({ length: 5000 }, (_, position) => position + 1);
      await logged.transaction().execute(async (trx) => {
        statements.length = 0;
        await outbox.mark(trx, 'dcim.site', ids);
        expect(statements).toHaveLength(1);
        statements.length = 0;
        await outbox.mark(trx, 'dcim.site', 1);
        expect(statements).toHaveLength(1);
      });
    } finally {
      await logged.destroy();
    }
    expect(await countOutbox(database.db)).toBe(5000);
  });

  test('returns the transaction id, schema and object count', async () => {
    const result = await database.db.transaction().execute(async (trx) => {
      const marked = await outbox.mark(trx, 'dcim.site', [3, 4, 3]);
      const current = await sql<{ id: string }>`SELECT pg_current_xact_id()::text AS id`.execute(trx);
      return { marked, current: current.rows[0]?.id };
    });

    expect(result.marked).toEqual({ transactionId: result.current, schema: 'public', objects: 2 });
  });

  test('an empty id list writes nothing', async () => {
    const result = await outbox.mark(database.db, 'dcim.site', []);

    expect(result.objects).toBe(0);
    expect(await countOutbox(database.db)).toBe(0);
  });
});

describe('mark validation', () => {
  test('rejects an unknown object type by name', async () => {
    const attempt = outbox.mark(database.db, 'dcim.cable', 1);

    await expect(attempt).rejects.toThrow(UnknownObjectTypeError);
    await expect(attempt).rejects.toThrow(/Invalid objectType: "dcim.cable" is not a declared object type/);
  });

  test.each([
    ['a non-numeric id for a bigint key', 'abc', /Invalid id: "abc" must be an integer from -9223372036854775808 to 9223372036854775807 \(key type bigint\)/],
    ['an out-of-range id', '99999999999999999999', /must be an integer from .* \(key type bigint\)/],
    ['a fractional number', 1.5, /Invalid id: 1.5 must be a safe integer/],
    ['an object', { id: 1 }, /must be a string, an integer or a bigint/],
  ])('rejects %s', async (_label, id, message) => {
    await expect(outbox.mark(database.db, 'dcim.site', id as never)).rejects.toThrow(message);
  });

  test('names the position of a bad id in a list', async () => {
    await expect(outbox.mark(database.db, 'dcim.site', [1, 2, 'x'])).rejects.toThrow(/Invalid ids\[2\]: "x"/);
  });

  test('rejects a mark whose schema cannot be determined', async () => {
    const attempt = database.db.transaction().execute(async (trx) => {
      await sql`SET LOCAL search_path = ''`.execute(trx);
      await outbox.mark(trx, 'dcim.site', 1);
    });

    await expect(attempt).rejects.toThrow(/Invalid schema: null could not be determined .* pass \{ schema \} to mark/);
  });

  test('names a NaN id as NaN', async () => {
    await expect(outbox.mark(database.db, 'dcim.site', Number.NaN)).rejects.toThrow(/Invalid id: NaN must be a safe integer/);
  });

  test('rejects an unsafe schema option', async () => {
    const attempt = outbox.mark(database.db, 'dcim.site', 1, { schema: 'a"; drop' });

    await expect(attempt).rejects.toThrow(ValidationError);
    expect(await countOutbox(database.db)).toBe(0);
  });
});

describe('rollbacks and savepoints', () => {
  async function seedCache(): Promise<void> {
    await insertSites(database.db, [fullSite(1, 'Existing One'), fullSite(2, 'Existing Two')]);
    await outbox.mark(database.db, 'dcim.site', [1, 2]);
    await outbox.drain();
  }

  async function expectNothingChanged(cacheBefore: string[]): Promise<void> {
    expect(await countOutbox(database.db)).toBe(0);
    await outbox.drain();
    expect(await readCache(database.db)).toEqual(cacheBefore);
  }

  test('a rolled-back transaction leaves no outbox rows', async () => {
    await seedCache();
    const before = await readCache(database.db);
    const attempt = outbox.transaction(async (trx) => {
      await trx.updateTable('site').set({ name: 'Renamed' }).where('id', '=', 1).execute();
      await outbox.mark(trx, 'dcim.site', 1);
      throw new Error('application failure');
    });

    await expect(attempt).rejects.toThrow('application failure');
    await expectNothingChanged(before);
  });

  test('sibling savepoints keep only the released one', async () => {
    await seedCache();
    await database.db.transaction().execute(async (trx) => {
      await sql`SAVEPOINT first`.execute(trx);
      await insertSites(trx, [fullSite(10, 'Kept Site')]);
      await outbox.mark(trx, 'dcim.site', 10);
      await sql`RELEASE SAVEPOINT first`.execute(trx);
      await sql`SAVEPOINT second`.execute(trx);
      await insertSites(trx, [fullSite(11, 'Dropped Site')]);
      await outbox.mark(trx, 'dcim.site', 11);
      await sql`ROLLBACK TO SAVEPOINT second`.execute(trx);
    });

    expect(await outboxRows()).toEqual(['public|dcim.site|10|upsert']);
    await outbox.drain();
    expect(await outbox.search({ query: 'Kept Site' })).toHaveLength(1);
    expect(await outbox.search({ query: 'Dropped Site' })).toHaveLength(0);
  });

  test('a rolled-back middle level drops its nested marks', async () => {
    await seedCache();
    await database.db.transaction().execute(async (trx) => {
      await insertSites(trx, [fullSite(20, 'Outer Site')]);
      await outbox.mark(trx, 'dcim.site', 20);
      await sql`SAVEPOINT middle`.execute(trx);
      await insertSites(trx, [fullSite(21, 'Middle Site')]);
      await outbox.mark(trx, 'dcim.site', 21);
      await sql`SAVEPOINT inner_level`.execute(trx);
      await insertSites(trx, [fullSite(22, 'Inner Site')]);
      await outbox.mark(trx, 'dcim.site', [22, 20]);
      await sql`RELEASE SAVEPOINT inner_level`.execute(trx);
      await sql`ROLLBACK TO SAVEPOINT middle`.execute(trx);
    });

    expect(await outboxRows()).toEqual(['public|dcim.site|20|upsert']);
  });

  test('a rolled-back inner delete keeps the object and its cache', async () => {
    await seedCache();
    const before = await readCache(database.db);
    await database.db.transaction().execute(async (trx) => {
      await sql`SAVEPOINT outer_level`.execute(trx);
      await sql`SAVEPOINT delete_level`.execute(trx);
      await trx.deleteFrom('site').where('id', '=', 1).execute();
      await outbox.markDeleted(trx, 'dcim.site', 1);
      await sql`ROLLBACK TO SAVEPOINT delete_level`.execute(trx);
      await sql`RELEASE SAVEPOINT outer_level`.execute(trx);
    });

    await expectNothingChanged(before);
    expect(await outbox.search({ query: 'Existing One' })).toHaveLength(1);
  });

  test('a mark after a rolled-back savepoint of the same object survives', async () => {
    await database.db.transaction().execute(async (trx) => {
      await sql`SAVEPOINT attempt`.execute(trx);
      await outbox.mark(trx, 'dcim.site', 30);
      await sql`ROLLBACK TO SAVEPOINT attempt`.execute(trx);
      await outbox.mark(trx, 'dcim.site', 30);
    });

    expect(await outboxRows()).toEqual(['public|dcim.site|30|upsert']);
  });

  test('Kysely controlled-transaction savepoints behave the same', async () => {
    const trx = await database.db.startTransaction().execute();
    await outbox.mark(trx, 'dcim.site', 40);
    const savepoint = await trx.savepoint('nested').execute();
    await outbox.mark(savepoint, 'dcim.site', 41);
    await savepoint.rollbackToSavepoint('nested').execute();
    await trx.commit().execute();

    expect(await outboxRows()).toEqual(['public|dcim.site|40|upsert']);
  });
});
