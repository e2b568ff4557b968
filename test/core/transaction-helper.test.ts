import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';

/**
 * Edge cases of `outbox.transaction()`: nested calls, marks made through
 * another outbox or another transaction, callbacks that fail after marking,
 * and a pool with a single connection.
 */

let database: TestDatabase;
let drainer: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('transaction_helper');
  drainer = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await drainer.migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site`.execute(database.db);
});

async function readSiteNames(): Promise<string[]> {
  const result = await sql<{ name: string }>`SELECT name FROM site ORDER BY id`.execute(database.db);
  return result.rows.map((row) => row.name);
}

async function searchExact(outbox: SearchOutbox, name: string): Promise<string[]> {
  const results = await outbox.search({ query: name, lookup: 'exact' });
  return results.map((result) => `${result.objectType}:${result.objectId}`);
}

describe('nested transaction helper calls', () => {
  test('nested call drains outer marks', async () => {
    const logLines: LogLine[] = [];
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, logger: capturingLogger(logLines) });

    const outcome = await helper
      .transaction(async (outer) => {
        // A service function that opens its own helper transaction but writes
        // through the transaction it was handed.
        await helper.transaction(async () => {
          await insertSites(outer, [fullSite(1, 'Nested Outer Write')]);
          await helper.mark(outer, 'dcim.site', 1);
        });
      })
      .then(
        () => 'fulfilled',
        (error: unknown) => `raised: ${String(error)}`,
      );

    // The nested call joins the outer transaction as a savepoint, so the
    // mark is dispatched after the outer commit. Rejecting the nested call
    // would also leave no outbox row behind.
    if (outcome === 'fulfilled') {
      expect(await readSiteNames()).toEqual(['Nested Outer Write']);
      expect(await searchExact(helper, 'Nested Outer Write')).toEqual(['dcim.site:1']);
    } else {
      expect(await readSiteNames()).toEqual([]);
    }
    expect(await countOutbox(database.db), 'outbox rows left after the helper returned').toBe(0);
    expect(logLines.filter((line) => line.level === 'error')).toEqual([]);
  });

  test('nested call on one-connection pool', async () => {
    const helper = createSearchOutbox({ db: database.connect({ max: 1, connectionTimeoutMillis: 500 }), indexes: FIXTURE_INDEXES });

    const outcome = await helper
      .transaction(async (outer) => {
        await insertSites(outer, [fullSite(1, 'Outer Site')]);
        await helper.mark(outer, 'dcim.site', 1);
        await helper.transaction(async (inner) => {
          await insertSites(inner, [fullSite(2, 'Inner Site')]);
          await helper.mark(inner, 'dcim.site', 2);
        });
      })
      .then(
        () => 'fulfilled',
        (error: unknown) => String(error),
      );

    // A nested call that opened a transaction of its own would wait for a
    // second connection while the outer one has the only one. Joining the
    // outer transaction needs none.
    expect(outcome).not.toMatch(/timeout exceeded when trying to connect/);
    if (outcome === 'fulfilled') {
      expect(await readSiteNames()).toEqual(['Outer Site', 'Inner Site']);
      expect(await countOutbox(database.db)).toBe(0);
    }
  });
});

describe('nested calls as savepoints', () => {
  test('failed nested call rolls back alone', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });

    await helper.transaction(async (outer) => {
      await insertSites(outer, [fullSite(1, 'Kept Outer Site')]);
      await helper.mark(outer, 'dcim.site', 1);
      await helper
        .transaction(async (inner) => {
          await insertSites(inner, [fullSite(2, 'Rolled Back Inner Site')]);
          await helper.mark(inner, 'dcim.site', 2);
          throw new Error('inner failure');
        })
        .catch((error: unknown) => expect(String(error)).toContain('inner failure'));
      await helper.transaction(async (inner) => {
        await insertSites(inner, [fullSite(3, 'Kept Inner Site')]);
        await helper.mark(inner, 'dcim.site', 3);
      });
    });

    expect(await readSiteNames()).toEqual(['Kept Outer Site', 'Kept Inner Site']);
    expect(await countOutbox(database.db)).toBe(0);
    expect(await searchExact(helper, 'Kept Inner Site')).toEqual(['dcim.site:3']);
    expect(await searchExact(helper, 'Rolled Back Inner Site')).toEqual([]);
    expect(helper.stats).toEqual({ dispatched: 1, dispatchFailures: 0 });
  });

  test('concurrent nested calls are rejected', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });

    const attempt = helper.transaction(async () => {
      await Promise.all([
        helper.transaction(async (inner) => sql`SELECT pg_sleep(0.05)`.execute(inner)),
        helper.transaction(async (inner) => sql`SELECT pg_sleep(0.05)`.execute(inner)),
      ]);
    });

    await expect(attempt).rejects.toThrow(/run nested calls one at a time/);
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('callback that outlives its transaction starts another', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    let later: Promise<void> | undefined;

    await helper.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'First Site')]);
      await helper.mark(trx, 'dcim.site', 1);
      // Work started inside the callback but finished after the commit.
      later = new Promise((resolve) => setTimeout(resolve, 20)).then(() =>
        helper.transaction(async (next) => {
          await insertSites(next, [fullSite(2, 'Later Site')]);
          await helper.mark(next, 'dcim.site', 2);
        }),
      );
    });
    await later;

    expect(await readSiteNames()).toEqual(['First Site', 'Later Site']);
    expect(await countOutbox(database.db)).toBe(0);
    expect(helper.stats).toEqual({ dispatched: 2, dispatchFailures: 0 });
  });
});

describe('marks from outside the helper context', () => {
  test('mark through another outbox', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    const other = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });

    const result = await helper.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'Other Instance')]);
      await other.mark(trx, 'dcim.site', 1);
      return 'committed';
    });

    expect(result).toBe('committed');
    expect(helper.stats.dispatchFailures).toBe(0);
    // The mark committed with the change, so the next drain finds it whether
    // or not the helper dispatched it.
    await drainer.drain();
    expect(await countOutbox(database.db)).toBe(0);
    expect(await searchExact(helper, 'Other Instance')).toEqual(['dcim.site:1']);
  });

  test('controlled transaction committed later', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });

    const controlled = await helper.transaction(async () => {
      const trx = await database.db.startTransaction().execute();
      await insertSites(trx, [fullSite(1, 'Committed Later')]);
      await helper.mark(trx, 'dcim.site', 1);
      return trx;
    });
    // The helper dispatched a transaction that was still open, so its drain
    // found no row. The mark must still be there once the caller commits.
    await controlled.commit().execute();

    expect(helper.stats.dispatchFailures).toBe(0);
    expect(await countOutbox(database.db, 'pending')).toBe(1);
    await drainer.drain();
    expect(await searchExact(helper, 'Committed Later')).toEqual(['dcim.site:1']);
  });
});

describe('callbacks that fail after marking', () => {
  test('rejected callback rolls back marks', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    const failure = new Error('application check failed after marking');

    const attempt = helper.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'Rolled Back')]);
      await helper.mark(trx, 'dcim.site', 1);
      return Promise.reject(failure);
    });

    await expect(attempt).rejects.toBe(failure);
    expect(await readSiteNames()).toEqual([]);
    expect(await countOutbox(database.db)).toBe(0);
    expect(helper.stats).toEqual({ dispatched: 0, dispatchFailures: 0 });
  });

  test('swallowed statement error raises', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });

    const outcome = await helper
      .transaction(async (trx) => {
        await insertSites(trx, [fullSite(1, 'Silently Rolled Back')]);
        await helper.mark(trx, 'dcim.site', 1);
        try {
          // A best-effort statement whose error the application ignores. It
          // leaves the transaction aborted, and PostgreSQL then completes the
          // COMMIT with a ROLLBACK tag instead of an error.
          await insertSites(trx, [fullSite(1, 'Duplicate Key')]);
        } catch {
          // ignored on purpose
        }
        return 'returned';
      })
      .then(
        (value) => value,
        (error: unknown) => `raised: ${String(error)}`,
      );

    // PostgreSQL rolled the transaction back, so the helper must raise rather
    // than return the callback's result. A failed COMMIT is the one error it raises.
    expect(outcome).toMatch(/^raised: /);
    expect(await readSiteNames()).toEqual([]);
    expect(await countOutbox(database.db)).toBe(0);
    expect(helper.stats).toEqual({ dispatched: 0, dispatchFailures: 0 });
  });
});

describe('failures after the commit', () => {
  test('throwing logger never raises after commit', async () => {
    const helper = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      dispatcher: {
        dispatch: async () => {
          throw new Error('queue unreachable');
        },
      },
      // A logger whose transport fails, for example a full disk or a closed stream.
      logger: {
        debug: () => {},
        info: () => {},
        warn: () => {},
        error: () => {
          throw new Error('log transport failed');
        },
      },
    });

    const outcome = await helper
      .transaction(async (trx) => {
        await insertSites(trx, [fullSite(1, 'Committed Before The Log')]);
        await helper.mark(trx, 'dcim.site', 1);
        return 'committed';
      })
      .then(
        (value) => value,
        (error: unknown) => `raised: ${String(error)}`,
      );

    // The change is committed, so an error here would make the caller retry
    // a transaction that succeeded.
    expect(await readSiteNames()).toEqual(['Committed Before The Log']);
    expect(helper.stats.dispatchFailures).toBe(1);
    expect(outcome).toBe('committed');
  });
});

describe('transaction helper on a one-connection pool', () => {
  test('concurrent calls on one connection', async () => {
    const helper = createSearchOutbox({ db: database.connect({ max: 1, connectionTimeoutMillis: 10_000 }), indexes: FIXTURE_INDEXES });
    const CALLS = 12;

    const results = await Promise.all(
      Array.from({ length: CALLS }, (_, position) =>
        helper.transaction(async (trx) => {
          const id = position + 1;
          await insertSites(trx, [fullSite(id, `Pooled ${id}`)]);
          await helper.mark(trx, 'dcim.site', id);
          return id;
        }),
      ),
    );

    expect(results).toEqual(Array.from({ length: CALLS }, (_, position) => position + 1));
    expect(helper.stats).toEqual({ dispatched: CALLS, dispatchFailures: 0 });
    expect(await countOutbox(database.db)).toBe(0);
    expect(await searchExact(helper, 'Pooled 7')).toEqual(['dcim.site:7']);
    expect((await helper.search({ query: 'Pooled', limit: 100 })).length).toBe(CALLS);
  });
});
