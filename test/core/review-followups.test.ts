import { createSearchOutbox, type SearchIndex, type SearchOutbox } from '@search-outbox/core';
import { startLocalPostgres, type LocalPostgres } from '@search-outbox/local-postgres';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, openTolerantPool, type TestDatabase } from '../support/database.js';
import { fillLockTable } from '../support/lock-table.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';

/**
 * Review of three changes. Nested `outbox.transaction()` calls run as
 * savepoints, a later successful drain retires dead outbox rows, and
 * rebuild runs resume, lock stale rows and halve a chunk or batch that does
 * not fit in the lock table. Tests named for a problem fail until that
 * problem is fixed, and the others check behavior that held up.
 */

const SITES = 40;
/** Object types of the fixture without IP fields, which the oracle cannot compute. */
const ORACLE_TYPES = ['dcim.site', 'dcim.region', 'dcim.device', 'dcim.virtualchassis'];

let database: TestDatabase;
let outbox: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('review_followups');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  await sql`
    TRUNCATE search_outbox.outbox, search_outbox.rebuild_progress, search_cache, device, site, region, virtual_chassis
  `.execute(database.db);
});

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function insertNumberedSites(count: number): Promise<void> {
  await insertSites(
    database.db,
    Array.from({ length: count }, (_, position) => fullSite(position + 1, `Site ${position + 1}`)),
  );
}

async function readSiteIds(): Promise<number[]> {
  const result = await sql<{ id: string }>`SELECT id FROM site ORDER BY id`.execute(database.db);
  return result.rows.map((row) => Number(row.id));
}

async function countMarks(objectId: number): Promise<number> {
  const result = await sql<{ count: string }>`
    SELECT count(*) AS count FROM search_outbox.outbox WHERE object_type = 'dcim.site' AND object_id = ${String(objectId)}
  `.execute(database.db);
  return Number(result.rows[0]?.count ?? 0);
}

async function searchExact(helper: SearchOutbox, name: string): Promise<string[]> {
  const results = await helper.search({ query: name, lookup: 'exact' });
  return results.map((result) => `${result.objectType}:${result.objectId}`);
}

/** Settles a promise into 'fulfilled' or the text of its error, with the SQLSTATE when there is one. */
async function settle(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => 'fulfilled',
    (error: unknown) => {
      const code = (error as { code?: unknown } | null)?.code;
      return typeof code === 'string' ? `raised ${code}: ${String(error)}` : `raised: ${String(error)}`;
    },
  );
}

/** Returns the SQL expression of the advisory lock key that drains and rebuilds take for one object of the public schema. */
function objectLockSql(objectType: string, objectId: number): string {
  return `hashtextextended('public' || chr(31) || '${objectType}' || chr(31) || '${objectId}', 0)`;
}

/** Waits until a session of `applicationName` waits for an advisory lock. */
async function waitForAdvisoryWait(applicationName: string): Promise<void> {
  for (let poll = 0; poll < 1000; poll += 1) {
    const waiting = await sql<{ pid: number }>`
      SELECT pid FROM pg_stat_activity
      WHERE application_name = ${applicationName} AND wait_event_type = 'Lock' AND wait_event = 'advisory'
    `.execute(database.db);
    if (waiting.rows.length > 0) return;
    await delay(5);
  }
  throw new Error(`no session of ${applicationName} started waiting for an advisory lock`);
}

describe('nested helper calls', () => {
  test('unawaited nested call commits with its mark', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    let nested: Promise<string> | undefined;

    await helper.transaction(async () => {
      // Fire-and-forget work that a service starts inside the callback. It
      // opened a transaction of its own before nested calls joined the outer one.
      nested = settle(
        helper.transaction(async (inner) => {
          await insertSites(inner, [fullSite(2, 'Unawaited Site')]);
          await helper.mark(inner, 'dcim.site', 2);
        }),
      );
    });
    const outcome = await (nested ?? Promise.resolve('never started'));

    // The site and its mark must commit together or not at all. The outer
    // COMMIT waits for the nested call, so both run inside the transaction.
    // Without the wait the insert ran after the COMMIT, outside any
    // transaction, and the mark failed, leaving a change no drain would find.
    expect(outcome).toBe('fulfilled');
    expect(await readSiteIds()).toEqual([2]);
    expect(await countMarks(2)).toBe(1);
  });

  test('unawaited nested call never raises after commit', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    let nested: Promise<string> | undefined;

    await helper.transaction(async (trx) => {
      nested = settle(
        helper.transaction(async (inner) => {
          await insertSites(inner, [fullSite(2, 'Unawaited Site')]);
          await helper.mark(inner, 'dcim.site', 2);
        }),
      );
      // One more statement of the outer callback lets the nested call's
      // writes reach the outer transaction before its COMMIT.
      await sql`SELECT 1`.execute(trx);
    });
    const outcome = await (nested ?? Promise.resolve('never started'));

    // A helper call that raises must leave nothing committed, or its caller
    // retries a change that already happened.
    if (outcome !== 'fulfilled') {
      expect(await readSiteIds(), `nested call outcome: ${outcome}`).toEqual([]);
      expect(await countMarks(2)).toBe(0);
    } else {
      expect(await readSiteIds()).toEqual([2]);
      expect(await countMarks(2)).toBe(1);
    }
  });

  test('second outbox opens its own transaction', async () => {
    const db = database.connect({ max: 2, connectionTimeoutMillis: 500 });
    const first = createSearchOutbox({ db, indexes: FIXTURE_INDEXES });
    const second = createSearchOutbox({ db, indexes: FIXTURE_INDEXES });

    const outcome = await settle(
      first.transaction(async (outer) => {
        await insertSites(outer, [fullSite(1, 'First Outbox Site')]);
        await first.mark(outer, 'dcim.site', 1);
        // A library with an outbox of its own, called from the application's callback on the same Kysely instance.
        await second.transaction(async (inner) => {
          await insertSites(inner, [fullSite(2, 'Second Outbox Site')]);
          await second.mark(inner, 'dcim.site', 2);
        });
      }),
    );

    // Nesting joins only calls of the same SearchOutbox instance. The other
    // instance's call is a transaction of its own on a second connection,
    // committed and drained before the outer one.
    expect(outcome).toBe('fulfilled');
    expect(await readSiteIds()).toEqual([1, 2]);
    expect(first.stats).toEqual({ dispatched: 1, dispatchFailures: 0 });
    expect(second.stats).toEqual({ dispatched: 1, dispatchFailures: 0 });
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('nested call swallowing its error rolls back', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    let nestedOutcome = 'not run';

    await helper.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'Outer Before')]);
      await helper.mark(trx, 'dcim.site', 1);
      nestedOutcome = await settle(
        helper.transaction(async (inner) => {
          await insertSites(inner, [fullSite(2, 'Nested Swallowed')]);
          await helper.mark(inner, 'dcim.site', 2);
          try {
            await insertSites(inner, [fullSite(2, 'Duplicate Key')]);
          } catch {
            // ignored on purpose, which leaves the savepoint aborted
          }
        }),
      );
      await insertSites(trx, [fullSite(3, 'Outer After')]);
      await helper.mark(trx, 'dcim.site', 3);
    });

    // RELEASE fails on the aborted savepoint, so the nested call rolls back
    // to it and raises, and the outer transaction goes on.
    expect(nestedOutcome).toMatch(/^raised 25P02: /);
    expect(await readSiteIds()).toEqual([1, 3]);
    expect(await countOutbox(database.db)).toBe(0);
    expect(await searchExact(helper, 'Outer After')).toEqual(['dcim.site:3']);
    expect(await searchExact(helper, 'Nested Swallowed')).toEqual([]);
    expect(helper.stats).toEqual({ dispatched: 1, dispatchFailures: 0 });
  });

  test('nested call after outer statement error', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    let nestedOutcome = 'not run';

    const outcome = await settle(
      helper.transaction(async (trx) => {
        await insertSites(trx, [fullSite(1, 'Aborted Outer')]);
        await helper.mark(trx, 'dcim.site', 1);
        try {
          await insertSites(trx, [fullSite(1, 'Duplicate Key')]);
        } catch {
          // ignored on purpose
        }
        nestedOutcome = await settle(
          helper.transaction(async (inner) => {
            await insertSites(inner, [fullSite(2, 'After The Error')]);
          }),
        );
        return 'returned';
      }),
    );

    expect(nestedOutcome).toMatch(/^raised 25P02: /);
    expect(outcome).toMatch(/^raised/);
    expect(await readSiteIds()).toEqual([]);
    expect(await countOutbox(database.db)).toBe(0);
    expect(helper.stats).toEqual({ dispatched: 0, dispatchFailures: 0 });
  });

  test('nested in nested rolls back innermost', async () => {
    const helper = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });

    await helper.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'Level One')]);
      await helper.mark(trx, 'dcim.site', 1);
      await helper.transaction(async (second) => {
        await insertSites(second, [fullSite(2, 'Level Two')]);
        await helper.mark(second, 'dcim.site', 2);
        const failed = await settle(
          helper.transaction(async (third) => {
            await insertSites(third, [fullSite(3, 'Level Three Failed')]);
            await helper.mark(third, 'dcim.site', 3);
            throw new Error('innermost failure');
          }),
        );
        expect(failed).toContain('innermost failure');
        // A second call at the same depth, after the first one ended, must not be taken for a concurrent one.
        await helper.transaction(async (third) => {
          await insertSites(third, [fullSite(4, 'Level Three Kept')]);
          await helper.mark(third, 'dcim.site', 4);
        });
      });
    });

    expect(await readSiteIds()).toEqual([1, 2, 4]);
    expect(await countOutbox(database.db)).toBe(0);
    expect(await searchExact(helper, 'Level Three Kept')).toEqual(['dcim.site:4']);
    expect(await searchExact(helper, 'Level Three Failed')).toEqual([]);
    expect(helper.stats).toEqual({ dispatched: 1, dispatchFailures: 0 });
  });
});

/** Inserts a dead outbox row for one object, as a drain that ran out of attempts leaves it. */
async function insertDeadRow(schema: string, objectType: string, objectId: string): Promise<void> {
  await sql`
    INSERT INTO search_outbox.outbox (transaction_id, target_schema, object_type, object_id, operation, state, attempts, last_error)
    VALUES (pg_current_xact_id(), ${schema}, ${objectType}, ${objectId}, 'upsert', 'dead', 5, 'failed before the test')
  `.execute(database.db);
}

async function readDeadRows(): Promise<string[]> {
  const result = await sql<{ key: string }>`
    SELECT concat_ws('|', target_schema, object_type, object_id) AS key FROM search_outbox.outbox
    WHERE state = 'dead' ORDER BY 1
  `.execute(database.db);
  return result.rows.map((row) => row.key);
}

describe('dead rows retired by a later drain', () => {
  test('dead rows of other objects stay', async () => {
    await insertSites(database.db, [fullSite(5, 'Site 5'), fullSite(50, 'Site 50')]);
    await insertDeadRow('public', 'dcim.site', '5');
    await insertDeadRow('public', 'dcim.site', '5');
    await insertDeadRow('public', 'dcim.region', '5');
    await insertDeadRow('tenant_other', 'dcim.site', '5');
    await insertDeadRow('public', 'dcim.site', '50');

    await outbox.mark(database.db, 'dcim.site', 5);
    const summary = await outbox.drain();

    expect(summary).toMatchObject({ claimed: 1, rebuilt: 1, deadRetired: 2 });
    expect(await readDeadRows()).toEqual(['public|dcim.region|5', 'public|dcim.site|50', 'tenant_other|dcim.site|5']);
  });

  test('drain skips dead rows a retry locks', async () => {
    await insertSites(database.db, [fullSite(5, 'Site 5')]);
    await insertDeadRow('public', 'dcim.site', '5');
    await outbox.mark(database.db, 'dcim.site', 5);

    // An operator's retry locks the dead row while the drain runs.
    const retrying = new pg.Client({ connectionString: database.url });
    await retrying.connect();
    let first;
    try {
      await retrying.query('BEGIN');
      await retrying.query(`UPDATE search_outbox.outbox SET state = 'pending', attempts = 0 WHERE state = 'dead'`);
      first = await outbox.drain();
      await retrying.query('COMMIT');
    } finally {
      await retrying.end();
    }
    const second = await outbox.drain();

    // The drain skips the locked row instead of waiting, and the retried
    // row drains on the next run, so nothing is lost either way.
    expect(first).toMatchObject({ rebuilt: 1, deadRetired: 0 });
    expect(second).toMatchObject({ claimed: 1, rebuilt: 1, deadRetired: 0 });
    expect(await countOutbox(database.db)).toBe(0);
    expect(await searchExact(outbox, 'Site 5')).toEqual(['dcim.site:5']);
  }, 20_000);

  test('two drainers retire each dead row once', async () => {
    await insertNumberedSites(SITES);
    for (let id = 1; id <= SITES; id += 1) await insertDeadRow('public', 'dcim.site', String(id));
    await outbox.mark(database.db, 'dcim.site', Array.from({ length: SITES }, (_, position) => position + 1));
    const first = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const second = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });

    const summaries = await Promise.all([first.drain({ batchSize: 3 }), second.drain({ batchSize: 3 })]);

    expect(summaries.map((summary) => summary.failed)).toEqual([0, 0]);
    expect(summaries.reduce((total, summary) => total + summary.deadRetired, 0)).toBe(SITES);
    expect(summaries.reduce((total, summary) => total + summary.claimed, 0)).toBe(SITES);
    expect(await countOutbox(database.db)).toBe(0);
  });
});

/** The fixture declarations with one more field on sites, as after a deploy that indexes the site status. */
const INDEXES_WITH_SITE_STATUS: readonly SearchIndex[] = FIXTURE_INDEXES.map((index) =>
  index.objectType === 'dcim.site' ? { ...index, fields: [...index.fields, { name: 'status', weight: 300 }] } : index,
);

describe('rebuild runs', () => {
  beforeEach(async () => {
    await sql`INSERT INTO region (id, name) VALUES (1, 'West'), (2, 'East'), (3, 'North')`.execute(database.db);
    await insertNumberedSites(SITES);
  });

  test('restart stops the superseded run', async () => {
    await outbox.rebuild({ objectTypes: ['dcim.site'] });
    const applicationName = 'review_followups_old_run';
    const oldRunner = createSearchOutbox({
      db: database.connect({ max: 2, applicationName }),
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
    });
    // Another session holds the lock of site 25, so the old run's third
    // chunk (sites 21 to 30) waits after chunks 1-10 and 11-20 committed.
    const blocker = new pg.Client({ connectionString: database.url });
    await blocker.connect();
    let oldOutcome: Promise<string>;
    try {
      await blocker.query(`SELECT pg_advisory_lock(${objectLockSql('dcim.site', 25)})`);
      const stopOld = new AbortController();
      oldOutcome = settle(
        oldRunner.rebuild({
          objectTypes: ['dcim.site'],
          chunkSize: 10,
          signal: stopOld.signal,
          onProgress: (progress) => {
            if (progress.done >= 30) stopOld.abort();
          },
        }),
      );
      await waitForAdvisoryWait(applicationName);

      // A bulk load without marks, then the remedy that docs/guarantees.md
      // names for it, a rebuild with restart. That run stops after its first chunk.
      await sql`UPDATE site SET name = name || ' loaded'`.execute(database.db);
      const stopRestart = new AbortController();
      const restarted = await outbox.rebuild({
        objectTypes: ['dcim.site'],
        chunkSize: 10,
        restart: true,
        signal: stopRestart.signal,
        onProgress: () => stopRestart.abort(),
      });
      expect(restarted.aborted).toBe(true);
    } finally {
      await blocker.end();
    }
    // The old run gets its lock, finds that the restarted run owns the
    // progress row, rolls its chunk back and stops with an error.
    expect(await oldOutcome).toMatch(/stopped: another rebuild run took over its progress/);

    const resumed = await outbox.rebuild({ objectTypes: ['dcim.site'], chunkSize: 10 });

    // The resumed run continues the restarted run after its first chunk, so
    // every site gets its name from after the load.
    expect(resumed.types[0]?.resumed).toBe(true);
    const namesBeforeLoad = await sql<{ object_id: string }>`
      SELECT object_id FROM search_cache
      WHERE object_type = 'dcim.site' AND field = 'name' AND value NOT LIKE '% loaded'
      ORDER BY object_id::bigint
    `.execute(database.db);
    expect(namesBeforeLoad.rows.map((row) => Number(row.object_id))).toEqual([]);
    expect(await readSortedCache(database.db)).toEqual(
      await expectedCacheLines(database.db, { objectTypes: ['dcim.site'] }),
    );
  });

  test('changed declaration starts a new run', async () => {
    const stop = new AbortController();
    const first = await outbox.rebuild({
      chunkSize: 10,
      signal: stop.signal,
      onProgress: (progress) => {
        if (progress.objectType === 'dcim.region') stop.abort();
      },
    });
    expect(first.types.map((type) => type.objectType)).toEqual(['dcim.site']);

    // The next deploy indexes one more site field and runs a full rebuild to fill it.
    const deployed = createSearchOutbox({ db: database.db, indexes: INDEXES_WITH_SITE_STATUS, dispatcher: 'none' });
    const second = await deployed.rebuild({ chunkSize: 10 });

    // The interrupted run built the site rows from the old declaration, so
    // resuming it and skipping dcim.site would leave every site without a
    // status row. The changed declaration starts a new run instead.
    expect(second.types.find((type) => type.objectType === 'dcim.site')?.skipped).toBe(false);
    expect(await readSortedCache(database.db)).toEqual(
      await expectedCacheLines(database.db, { indexes: INDEXES_WITH_SITE_STATUS, objectTypes: ORACLE_TYPES }),
    );
  });

  test('rebuild after bulk delete on resume', async () => {
    await outbox.rebuild({ objectTypes: ['dcim.site', 'dcim.region'] });
    await sql`DELETE FROM site WHERE id > 10`.execute(database.db);
    const stop = new AbortController();
    const first = await outbox.rebuild({
      objectTypes: ['dcim.site', 'dcim.region'],
      chunkSize: 3,
      signal: stop.signal,
      onProgress: (progress) => {
        if (progress.objectType === 'dcim.region') stop.abort();
      },
    });
    expect(first.aborted).toBe(true);

    const second = await outbox.rebuild({ objectTypes: ['dcim.site', 'dcim.region'], chunkSize: 3 });

    // The finished type is skipped with the counts of the run that did it.
    expect(second.types).toMatchObject([
      { objectType: 'dcim.site', objects: 10, skipped: true },
      { objectType: 'dcim.region', objects: 3, resumed: true, skipped: false },
    ]);
    expect(await readSortedCache(database.db)).toEqual(
      await expectedCacheLines(database.db, { objectTypes: ['dcim.site', 'dcim.region'] }),
    );
  });
});

describe('rebuild of text and uuid keys', () => {
  const KEYED_INDEXES: readonly SearchIndex[] = [
    { objectType: 'test.tag', table: 'tag', keyType: 'text', fields: [{ name: 'name', weight: 100 }] },
    { objectType: 'test.token', table: 'token', keyType: 'uuid', fields: [{ name: 'name', weight: 100 }] },
  ];

  beforeAll(async () => {
    await sql`
      CREATE TABLE tag (id text PRIMARY KEY, name text NOT NULL);
      CREATE TABLE token (id uuid PRIMARY KEY, name text NOT NULL);
    `.execute(database.db);
  });

  beforeEach(async () => {
    await sql`TRUNCATE tag, token`.execute(database.db);
  });

  async function readKeyedCache(): Promise<string[]> {
    const result = await sql<{ line: string }>`
      SELECT object_type || '|' || object_id AS line FROM search_cache WHERE object_type LIKE 'test.%' ORDER BY 1
    `.execute(database.db);
    return result.rows.map((row) => row.line);
  }

  test('stale rows of uuid and text keys removed', async () => {
    const keyed = createSearchOutbox({ db: database.db, indexes: KEYED_INDEXES, dispatcher: 'none' });
    const tags = ['a', 'B', 'b', '10', '9', 'z z', 'ä', 'a%', 'a_'];
    await sql`INSERT INTO tag (id, name) SELECT id, 'Tag ' || id FROM unnest(${tags}::text[]) AS id`.execute(database.db);
    await sql`INSERT INTO token (id, name) SELECT gen_random_uuid(), 'Token ' || i FROM generate_series(1, 25) AS i`.execute(
      database.db,
    );
    await keyed.rebuild({ objectTypes: ['test.tag', 'test.token'], chunkSize: 4 });
    expect((await readKeyedCache()).length).toBe(tags.length + 25);

    await sql`DELETE FROM tag WHERE id IN ('B', '10', 'a%')`.execute(database.db);
    await sql`DELETE FROM token WHERE name NOT IN ('Token 1', 'Token 2')`.execute(database.db);
    const summary = await keyed.rebuild({ objectTypes: ['test.tag', 'test.token'], chunkSize: 2 });

    expect(summary.types.map((type) => [type.objectType, type.objects, type.staleRowsRemoved])).toEqual([
      ['test.tag', tags.length - 3, 3],
      ['test.token', 2, 23],
    ]);
    const expected = await sql<{ line: string }>`
      SELECT 'test.tag|' || id AS line FROM tag UNION ALL SELECT 'test.token|' || id::text FROM token ORDER BY 1
    `.execute(database.db);
    expect(await readKeyedCache()).toEqual(expected.rows.map((row) => row.line));
  });

  test('stale rows of an empty text key removed', async () => {
    const keyed = createSearchOutbox({ db: database.db, indexes: KEYED_INDEXES, dispatcher: 'none' });
    // An empty string is a valid text primary key. Marks reject it, so only a
    // rebuild indexes it, and only a rebuild can remove its rows again.
    await sql`INSERT INTO tag (id, name) VALUES ('', 'Empty Key Tag'), ('a', 'Tag a')`.execute(database.db);
    await keyed.rebuild({ objectTypes: ['test.tag'] });
    expect(await readKeyedCache()).toEqual(['test.tag|', 'test.tag|a']);

    await sql`DELETE FROM tag`.execute(database.db);
    const summary = await keyed.rebuild({ objectTypes: ['test.tag'] });

    // Paging that started at object_id > '' never selected the empty key.
    expect(summary.types[0]?.staleRowsRemoved).toBe(2);
    expect(await readKeyedCache()).toEqual([]);
  });
});

/**
 * Makes every INSERT into the cache that writes rows of more than
 * `maxObjects` objects fail with SQLSTATE 53200, the error of a full lock
 * table, so that halving can be tested without filling the server's shared
 * lock table. A negative `maxObjects` fails every insert.
 */
async function limitObjectsPerInsert(maxObjects: number): Promise<void> {
  await sql`
    CREATE OR REPLACE FUNCTION followups_limit_objects() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF (SELECT count(DISTINCT object_id) FROM inserted_rows) > ${sql.lit(maxObjects)} THEN
        RAISE EXCEPTION 'out of shared memory (raised by a test trigger)' USING ERRCODE = '53200';
      END IF;
      RETURN NULL;
    END
    $$;
    CREATE TRIGGER followups_limit_objects AFTER INSERT ON search_cache
    REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT EXECUTE FUNCTION followups_limit_objects();
  `.execute(database.db);
}

async function removeObjectLimit(): Promise<void> {
  await sql`
    DROP TRIGGER IF EXISTS followups_limit_objects ON search_cache;
    DROP FUNCTION IF EXISTS followups_limit_objects();
  `.execute(database.db);
}

describe('halving on a full lock table', () => {
  beforeEach(async () => {
    await insertNumberedSites(10);
  });

  test('drain halving keeps every object once', async () => {
    const logLines: LogLine[] = [];
    const drainer = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
      logger: capturingLogger(logLines),
    });
    await outbox.mark(database.db, 'dcim.site', Array.from({ length: 10 }, (_, position) => position + 1));

    await limitObjectsPerInsert(3);
    let summary;
    try {
      summary = await drainer.drain({ batchSize: 10 });
    } finally {
      await removeObjectLimit();
    }

    expect(summary).toMatchObject({ claimed: 10, objects: 10, rebuilt: 10, failed: 0, remaining: 0, batches: 5 });
    const halvings = logLines.filter((line) => line.message.startsWith('drain batch ran out of shared memory'));
    expect(halvings.map((line) => [line.attributes?.batchSize, line.attributes?.nextBatchSize])).toEqual([
      [10, 5],
      [5, 2],
    ]);
    expect(await readSortedCache(database.db)).toEqual(await expectedCacheLines(database.db, { objectTypes: ['dcim.site'] }));
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('drain halving stops at one object', async () => {
    const logLines: LogLine[] = [];
    const drainer = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
      logger: capturingLogger(logLines),
    });
    await outbox.mark(database.db, 'dcim.site', Array.from({ length: 8 }, (_, position) => position + 1));

    await limitObjectsPerInsert(-1);
    let outcome: string;
    try {
      outcome = await settle(drainer.drain({ batchSize: 8 }));
    } finally {
      await removeObjectLimit();
    }

    expect(outcome).toMatch(/^raised 53200: /);
    const halvings = logLines.filter((line) => line.message.startsWith('drain batch ran out of shared memory'));
    expect(halvings.map((line) => line.attributes?.nextBatchSize)).toEqual([4, 2, 1]);
    expect(logLines.filter((line) => line.message.startsWith('drain batch failed and was rolled back'))).toHaveLength(1);
    // Every attempt rolled back whole, so no row lost or spent an attempt.
    const attempts = await sql<{ rows: string; attempts: string }>`
      SELECT count(*) AS rows, sum(attempts) AS attempts FROM search_outbox.outbox WHERE state = 'pending'
    `.execute(database.db);
    expect(attempts.rows[0]).toEqual({ rows: '8', attempts: '0' });
  });

  test('rebuild chunk halving keeps counts', async () => {
    const logLines: LogLine[] = [];
    const rebuilder = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
      logger: capturingLogger(logLines),
    });

    await limitObjectsPerInsert(3);
    let summary;
    try {
      summary = await rebuilder.rebuild({ objectTypes: ['dcim.site'], chunkSize: 10 });
    } finally {
      await removeObjectLimit();
    }

    expect(summary.types).toMatchObject([{ objectType: 'dcim.site', objects: 10, rows: 70, failed: 0 }]);
    const halvings = logLines.filter((line) => line.message.startsWith('rebuild chunk ran out of shared memory'));
    expect(halvings.map((line) => [line.attributes?.chunkSize, line.attributes?.nextChunkSize])).toEqual([
      [10, 5],
      [5, 2],
    ]);
    expect(await readSortedCache(database.db)).toEqual(await expectedCacheLines(database.db, { objectTypes: ['dcim.site'] }));
    const progress = await sql<{ objects: string; finished: boolean }>`
      SELECT objects, finished_at IS NOT NULL AS finished FROM search_outbox.rebuild_progress WHERE object_type = 'dcim.site'
    `.execute(database.db);
    expect(progress.rows).toEqual([{ objects: '10', finished: true }]);
  });
});

describe('stale-row removal on a full lock table', () => {
  // Filling the shared lock table fails the lock requests of every session
  // on the server, so this test runs on a server of its own.
  let server: LocalPostgres;
  let isolatedDb: Kysely<any>;

  beforeAll(async () => {
    server = await startLocalPostgres({ databaseUrl: null });
    const pool = openTolerantPool(await server.createDatabase('stale_rows'), { max: 2 });
    isolatedDb = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
  });

  afterAll(async () => {
    await isolatedDb?.destroy();
    await server?.stop();
  });

  test('stale-row removal halves its batch', async () => {
    const WIDGETS = 3000;
    const indexes = [{ objectType: 'test.widget', table: 'widget', fields: [{ name: 'name', weight: 100 }] }];
    const logLines: LogLine[] = [];
    const isolated = createSearchOutbox({ db: isolatedDb, indexes, dispatcher: 'none', logger: capturingLogger(logLines) });
    await isolated.migrate();
    await sql`CREATE TABLE widget (id bigint PRIMARY KEY, name text NOT NULL)`.execute(isolatedDb);
    await sql`INSERT INTO widget SELECT i, 'Widget ' || i FROM generate_series(1, ${WIDGETS}) AS i`.execute(isolatedDb);
    await isolated.rebuild({ chunkSize: 500 });
    // A bulk delete without marks: only the rebuild's stale-row removal cleans it up.
    await sql`DELETE FROM widget`.execute(isolatedDb);

    // Another session fills the lock table and frees 1,000 entries, so
    // 3,000 object locks in one transaction do not fit and a quarter of them do.
    const holder = new pg.Client({ connectionString: server.urlFor('stale_rows') });
    await holder.connect();
    const outcomes: string[] = [];
    try {
      await fillLockTable(holder, { classId: 7003, freeEntries: 1000 });
      // The chunks find no object left, so only the stale-row removal takes locks, all 3,000 in one transaction.
      outcomes.push(await settle(isolated.rebuild({ chunkSize: WIDGETS })));
      outcomes.push(await settle(isolated.rebuild({ chunkSize: WIDGETS })));
    } finally {
      await holder.end();
    }

    // The stale-row removal halves its batch like a chunk does. Before, it
    // raised 53200 on every run and the rebuild never finished.
    expect(outcomes).toEqual(['fulfilled', 'fulfilled']);
    const cached = await sql<{ count: string }>`SELECT count(*) AS count FROM search_cache`.execute(isolatedDb);
    expect(Number(cached.rows[0]?.count)).toBe(0);
  });
});
