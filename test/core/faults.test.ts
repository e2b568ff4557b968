import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';

/**
 * Faults on the database side of the write and drain paths: a drainer
 * backend terminated inside a batch, a COMMIT that fails, a backend that
 * dies while committing, and a pool with no free connection. After each, one more drain must leave the cache equal to a
 * full rebuild from the source tables, with an empty outbox.
 */

let database: TestDatabase;
let logLines: LogLine[];
let drainer: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('faults');
  logLines = [];
  drainer = createSearchOutbox({
    db: database.db,
    indexes: FIXTURE_INDEXES,
    dispatcher: 'none',
    logger: capturingLogger(logLines),
  });
  await drainer.migrate();
  await createFixtureTables(database.db);
  // A deferred constraint trigger on the cache runs inside COMMIT. The test
  // arms it through commit_fault to fail the drainer's COMMIT on purpose.
  await sql`
    CREATE TABLE commit_fault (action text NOT NULL);
    CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      requested text;
    BEGIN
      SELECT action INTO requested FROM commit_fault LIMIT 1;
      IF requested = 'raise' THEN
        RAISE EXCEPTION 'injected commit failure';
      ELSIF requested = 'terminate' THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(5);
      END IF;
      RETURN NULL;
    END
    $$;
    CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON search_cache
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit();
  `.execute(database.db);
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  logLines.length = 0;
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site, commit_fault`.execute(database.db);
});

afterEach(async () => {
  await sql`TRUNCATE commit_fault`.execute(database.db);
});

/** Inserts sites 1..count, drains them, then renames them and marks them again, leaving `count` pending rows. */
async function prepareRenamedSites(count: number): Promise<string[]> {
  const ids = Array.from({ length: count }, (_, index) => index + 1);
  await insertSites(database.db, ids.map((id) => fullSite(id, `Site ${id}`)));
  await drainer.mark(database.db, 'dcim.site', ids);
  await drainer.drain();
  const before = await readSortedCache(database.db);

  await database.db.updateTable('site').set({ name: sql`name || ' renamed'` }).execute();
  await drainer.mark(database.db, 'dcim.site', ids);
  return before;
}

async function readAttempts(): Promise<number[]> {
  const result = await sql<{ attempts: number }>`SELECT attempts FROM search_outbox.outbox ORDER BY id`.execute(database.db);
  return result.rows.map((row) => row.attempts);
}

/** Checks the end state every fault must reach after recovery. */
async function expectConsistentCache(): Promise<void> {
  const cache = await readSortedCache(database.db);
  expect(await countOutbox(database.db)).toBe(0);
  expect(cache).toEqual(await expectedCacheLines(database.db, { objectTypes: ['dcim.site'] }));
  expect(new Set(cache).size).toBe(cache.length);
}

function batchFailureLines(): LogLine[] {
  return logLines.filter((line) => line.level === 'error' && line.message.startsWith('drain batch failed'));
}

describe('drainer backend', () => {
  test('terminated mid-batch loses nothing', async () => {
    const before = await prepareRenamedSites(3);
    const applicationName = 'faults_mid_batch_drainer';
    const midBatch = createSearchOutbox({
      db: database.connect({ max: 1, applicationName }),
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
      logger: capturingLogger(logLines),
    });

    // Another session holds the object lock of site 2, so the drain stops
    // inside its batch, after the claim, waiting for that lock.
    const blocker = new pg.Client({ connectionString: database.url });
    await blocker.connect();
    await blocker.query(`SELECT pg_advisory_lock(hashtextextended('public' || chr(31) || 'dcim.site' || chr(31) || '2', 0))`);
    try {
      const draining = midBatch.drain();
      const outcome = draining.then(
        () => 'finished',
        (error: unknown) => String(error),
      );
      // Finding the backend and terminating it are separate statements:
      // PostgreSQL may evaluate a pg_terminate_backend(pid) in the WHERE
      // clause before the other conditions, and terminate other backends.
      let terminated = 0;
      for (let poll = 0; poll < 200 && terminated === 0; poll += 1) {
        const waiting = await sql<{ pid: number }>`
          SELECT pid FROM pg_stat_activity
          WHERE application_name = ${applicationName} AND wait_event_type = 'Lock' AND wait_event = 'advisory'
            AND backend_xid IS NOT NULL
        `.execute(database.db);
        for (const { pid } of waiting.rows) {
          await sql`SELECT pg_terminate_backend(${pid}::int)`.execute(database.db);
          terminated += 1;
        }
        if (terminated === 0) await new Promise((resolve) => setTimeout(resolve, 10));
      }

      expect(terminated).toBe(1);
      expect(await outcome).toMatch(/terminat/i);
    } finally {
      await blocker.end();
    }

    expect(await readSortedCache(database.db)).toEqual(before);
    expect(await countOutbox(database.db, 'pending')).toBe(3);
    expect(await readAttempts()).toEqual([0, 0, 0]);
    expect(batchFailureLines()).toHaveLength(1);
    expect(await midBatch.drain()).toMatchObject({ claimed: 3, rebuilt: 3 });
    await expectConsistentCache();
  });
});

describe('drainer COMMIT', () => {
  test('that fails rolls the batch back', async () => {
    const before = await prepareRenamedSites(3);
    await sql`INSERT INTO commit_fault VALUES ('raise')`.execute(database.db);

    await expect(drainer.drain()).rejects.toThrow(/injected commit failure/);

    expect(await readSortedCache(database.db)).toEqual(before);
    expect(await countOutbox(database.db, 'pending')).toBe(3);
    expect(await readAttempts()).toEqual([0, 0, 0]);
    expect(batchFailureLines()).toHaveLength(1);
    expect(batchFailureLines()[0]?.attributes).toMatchObject({ batch: 1, error: 'injected commit failure' });

    await sql`TRUNCATE commit_fault`.execute(database.db);
    const summary = await drainer.drain();
    expect(summary).toMatchObject({ claimed: 3, rebuilt: 3, remaining: 0 });
    await expectConsistentCache();
  });

  test('whose backend dies loses nothing', async () => {
    const before = await prepareRenamedSites(3);
    await sql`INSERT INTO commit_fault VALUES ('terminate')`.execute(database.db);

    await expect(drainer.drain()).rejects.toThrow(/terminat/i);

    expect(await readSortedCache(database.db)).toEqual(before);
    expect(await countOutbox(database.db, 'pending')).toBe(3);
    expect(batchFailureLines()).toHaveLength(1);

    await sql`TRUNCATE commit_fault`.execute(database.db);
    // The pool dropped the dead connection, so this drain runs on a new one.
    expect(await drainer.drain()).toMatchObject({ claimed: 3, rebuilt: 3 });
    await expectConsistentCache();
  });

  test('that fails in the application commits nothing', async () => {
    const { db } = database.connectPool({ max: 2 });
    const writer = createSearchOutbox({ db, indexes: FIXTURE_INDEXES, logger: capturingLogger(logLines) });
    await sql`
      CREATE TABLE deferred_site_check (
        site_id bigint REFERENCES site (id) DEFERRABLE INITIALLY DEFERRED
      )
    `.execute(database.db);
    try {
      const attempt = writer.transaction(async (trx) => {
        await insertSites(trx, [fullSite(1, 'Never Committed')]);
        await sql`INSERT INTO deferred_site_check VALUES (999)`.execute(trx);
        await writer.mark(trx, 'dcim.site', 1);
      });

      await expect(attempt).rejects.toThrow(/foreign key/);
      expect(await countOutbox(database.db)).toBe(0);
      expect(writer.stats).toEqual({ dispatched: 0, dispatchFailures: 0 });
      await expectConsistentCache();
      expect(await readSortedCache(database.db)).toEqual([]);
    } finally {
      await sql`DROP TABLE deferred_site_check`.execute(database.db);
    }
  });
});

describe('exhausted pool', () => {
  test('fails the inline drain, not the commit', async () => {
    const { pool, db } = database.connectPool({ max: 2, connectionTimeoutMillis: 200 });
    const writer = createSearchOutbox({ db, indexes: FIXTURE_INDEXES, logger: capturingLogger(logLines) });
    const checkedOut: pg.PoolClient[] = [];

    const result = await writer.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'Committed Under Load')]);
      await writer.mark(trx, 'dcim.site', 1);
      // Another request takes the pool's second connection, and a third
      // waits in the pool's queue. When this transaction releases its
      // connection, the waiting request receives it before the inline drain
      // requests one, so the drain finds no free connection and times out.
      checkedOut.push(await pool.connect());
      void pool.connect().then((client) => checkedOut.push(client));
      return 'committed';
    });
    checkedOut.forEach((client) => client.release());

    expect(result).toBe('committed');
    expect(writer.stats).toEqual({ dispatched: 0, dispatchFailures: 1 });
    const failure = logLines.find((line) => line.message.startsWith('dispatch after commit failed'));
    expect(failure?.level).toBe('error');
    expect(String(failure?.attributes?.error)).toMatch(/timeout/i);
    expect(batchFailureLines()).toHaveLength(1);
    expect(await countOutbox(database.db, 'pending')).toBe(1);

    await drainer.drain();
    await expectConsistentCache();
    expect(await drainer.search({ query: 'Committed Under Load' })).toHaveLength(1);
  });

  test('fails a drain and changes nothing', async () => {
    const { pool, db } = database.connectPool({ max: 1, connectionTimeoutMillis: 100 });
    const starved = createSearchOutbox({ db, indexes: FIXTURE_INDEXES, dispatcher: 'none', logger: capturingLogger(logLines) });
    const before = await prepareRenamedSites(2);
    const onlyClient = await pool.connect();
    try {
      await expect(starved.drain()).rejects.toThrow(/timeout/i);
    } finally {
      onlyClient.release();
    }

    expect(await readSortedCache(database.db)).toEqual(before);
    expect(await countOutbox(database.db, 'pending')).toBe(2);
    expect(batchFailureLines()).toHaveLength(1);
    expect(await starved.drain()).toMatchObject({ claimed: 2, remaining: 0 });
    await expectConsistentCache();
  });

  test('under many writers loses no committed change', async () => {
    const { db } = database.connectPool({ max: 2, connectionTimeoutMillis: 50 });
    const writer = createSearchOutbox({ db, indexes: FIXTURE_INDEXES, logger: capturingLogger(logLines) });
    const ids = [1, 2, 3, 4, 5, 6, 7, 8];
    await insertSites(database.db, ids.map((id) => fullSite(id, `Site ${id}`)));
    await drainer.mark(database.db, 'dcim.site', ids);
    await drainer.drain();

    const attempts = Array.from({ length: 40 }, (_, index) =>
      writer.transaction(async (trx) => {
        const id = (index % 8) + 1;
        await trx.updateTable('site').set({ description: `Write ${index}` }).where('id', '=', id).execute();
        await writer.mark(trx, 'dcim.site', id);
        await sql`SELECT pg_sleep(0.01)`.execute(trx);
      }),
    );
    const outcomes = await Promise.allSettled(attempts);

    // A transaction that found no connection never started, so the only
    // errors that reach a writer are pool timeouts before its first statement.
    for (const outcome of outcomes) {
      if (outcome.status === 'rejected') expect(String(outcome.reason)).toMatch(/timeout/i);
    }
    const dispatchFailureLines = logLines.filter((line) => line.message.startsWith('dispatch after commit failed'));
    expect(dispatchFailureLines).toHaveLength(writer.stats.dispatchFailures);

    await drainer.drain();
    await expectConsistentCache();
  });
});
