import { createSearchOutbox, type RebuildProgress, type SearchOutbox } from '@search-outbox/core';
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
 * Faults and concurrency around `rebuild()`: a backend terminated inside a
 * chunk, writers, drains and searches running during a rebuild, two rebuilds
 * at once, stale-row removal racing a drain, a resumed multi-type rebuild and
 * a chunk at the maximum size. The tests end by comparing the cache with the oracle.
 */

const SITES = 400;
/** Object types of the fixture without IP fields, which the oracle cannot compute. */
const ORACLE_TYPES = ['dcim.site', 'dcim.region', 'dcim.device', 'dcim.virtualchassis'];

let database: TestDatabase;
let outbox: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('rebuild_faults');
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
  await sql`INSERT INTO region (id, name) VALUES (1, 'West'), (2, 'East'), (3, 'North')`.execute(database.db);
  await insertSites(
    database.db,
    Array.from({ length: SITES }, (_, position) => ({ ...fullSite(position + 1, `Site ${position + 1}`), region_id: 1 })),
  );
});

/** Creates an outbox on its own pool whose sessions carry `applicationName`, so a test can find and terminate them. */
function namedOutbox(applicationName: string, max = 2): SearchOutbox {
  const db = database.connect({ max, applicationName });
  return createSearchOutbox({ db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Returns the SQL expression of the advisory lock key that drains and rebuilds take for one object of the public schema. */
function objectLockSql(objectType: string, objectId: number): string {
  return `hashtextextended('public' || chr(31) || '${objectType}' || chr(31) || '${objectId}', 0)`;
}

async function expectCacheEqualsOracle(): Promise<void> {
  const cache = await readSortedCache(database.db);
  expect(cache).toEqual(await expectedCacheLines(database.db, { objectTypes: ORACLE_TYPES }));
  expect(new Set(cache).size).toBe(cache.length);
}

async function readUnfinishedProgress(): Promise<string[]> {
  const result = await sql<{ object_type: string }>`
    SELECT object_type FROM search_outbox.rebuild_progress WHERE finished_at IS NULL ORDER BY object_type
  `.execute(database.db);
  return result.rows.map((row) => row.object_type);
}

/** Counts the cache rows of sites 1..maxId. */
async function countSiteRows(db: Kysely<any>, maxId: number): Promise<number> {
  const result = await sql<{ count: string }>`
    SELECT count(*) AS count FROM search_cache WHERE object_type = 'dcim.site' AND object_id::bigint <= ${maxId}
  `.execute(db);
  return Number(result.rows[0]?.count ?? 0);
}

describe('rebuild backend terminated mid-chunk', () => {
  test('resumes after a terminated chunk', async () => {
    await outbox.rebuild();
    // A change without a mark, which only a rebuild brings into the cache.
    await sql`UPDATE site SET name = name || ' renamed'`.execute(database.db);

    const applicationName = 'rebuild_faults_mid_chunk';
    const rebuilder = namedOutbox(applicationName);
    // Another session holds the object lock of site 350, so the fourth chunk
    // of 100 waits inside its transaction until the test terminates it.
    const blocker = new pg.Client({ connectionString: database.url });
    await blocker.connect();
    await blocker.query(`SELECT pg_advisory_lock(${objectLockSql('dcim.site', 350)})`);
    let outcome: string;
    let terminated = 0;
    try {
      const rebuilding = rebuilder
        .rebuild({ objectTypes: ['dcim.site'], chunkSize: 100 })
        .then(() => 'finished', (error: unknown) => String(error));
      // Finding the backend and terminating it are separate statements, so
      // that pg_terminate_backend never runs on a row another condition would reject.
      for (let poll = 0; poll < 500 && terminated === 0; poll += 1) {
        const waiting = await sql<{ pid: number }>`
          SELECT pid FROM pg_stat_activity
          WHERE application_name = ${applicationName} AND wait_event_type = 'Lock' AND wait_event = 'advisory'
        `.execute(database.db);
        for (const { pid } of waiting.rows) {
          await sql`SELECT pg_terminate_backend(${pid}::int)`.execute(database.db);
          terminated += 1;
        }
        if (terminated === 0) await delay(10);
      }
      outcome = await rebuilding;
    } finally {
      await blocker.end();
    }

    expect(terminated).toBe(1);
    expect(outcome).toMatch(/terminat/i);
    // Three chunks committed, the fourth rolled back, and no site lost its rows.
    expect(await countSiteRows(database.db, SITES)).toBe(SITES * 7);
    const progress = await sql<{ last_key: string; objects: string }>`
      SELECT last_key, objects FROM search_outbox.rebuild_progress WHERE object_type = 'dcim.site' AND finished_at IS NULL
    `.execute(database.db);
    expect(progress.rows).toEqual([{ last_key: '300', objects: '300' }]);
    const cache = await readSortedCache(database.db);
    expect(cache).toContain('dcim.site|300|name|str|Site 300 renamed|100');
    expect(cache).toContain('dcim.site|301|name|str|Site 301|100');

    // The same outbox resumes after the failure, on a fresh connection of its pool.
    const resumed = await rebuilder.rebuild({ objectTypes: ['dcim.site'], chunkSize: 100 });

    expect(resumed.types[0]).toMatchObject({ objectType: 'dcim.site', objects: SITES, resumed: true, rows: 100 * 7 });
    await expectCacheEqualsOracle();
    expect(await readUnfinishedProgress()).toEqual([]);
    expect(await countOutbox(database.db)).toBe(0);
  });
});

describe('rebuild under concurrent work', () => {
  test('rebuild with writers and drains', async () => {
    await outbox.rebuild();
    const writer = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const drainer = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const watcherDb = database.connect({ max: 1 });

    let running = true;
    const writing = (async () => {
      for (let round = 1; running; round += 1) {
        await writer.transaction(async (trx) => {
          const renamed = ((round * 37) % SITES) + 1;
          await trx.updateTable('site').set({ name: `Site ${renamed} round ${round}` }).where('id', '=', renamed).execute();
          await writer.mark(trx, 'dcim.site', renamed);
          const created = 10_000 + round;
          await insertSites(trx, [fullSite(created, `Created ${round}`)]);
          await writer.mark(trx, 'dcim.site', created);
          if (round % 3 === 0) {
            await trx.deleteFrom('site').where('id', '=', created - 1).execute();
            await writer.markDeleted(trx, 'dcim.site', created - 1);
          }
        });
      }
    })();
    const draining = (async () => {
      while (running) {
        await drainer.drain({ batchSize: 5 });
        await delay(1);
      }
    })();
    // Writers rename sites 1..SITES but never delete them or empty a field,
    // so each of them has seven rows in every snapshot, whatever runs meanwhile.
    const observed: number[] = [];
    const watching = (async () => {
      while (running) observed.push(await countSiteRows(watcherDb, SITES));
    })();

    let summary;
    try {
      summary = await outbox.rebuild({ chunkSize: 20, restart: true });
    } finally {
      running = false;
      await Promise.all([writing, draining, watching]);
    }
    await outbox.drain();

    expect(summary.aborted).toBe(false);
    expect(observed.length).toBeGreaterThan(0);
    expect(observed.filter((count) => count !== SITES * 7)).toEqual([]);
    await expectCacheEqualsOracle();
    expect(await countOutbox(database.db)).toBe(0);
    expect(await readUnfinishedProgress()).toEqual([]);
  });

  test('two concurrent rebuilds', async () => {
    await outbox.rebuild();
    // Changes without marks: stale rows of deleted sites and stale names.
    await sql`DELETE FROM site WHERE id > ${SITES - 20}`.execute(database.db);
    await sql`UPDATE site SET name = name || ' changed' WHERE id <= 50`.execute(database.db);
    const first = namedOutbox('rebuild_faults_first');
    const second = namedOutbox('rebuild_faults_second');

    const outcomes = await Promise.allSettled([
      first.rebuild({ chunkSize: 15 }),
      second.rebuild({ chunkSize: 25, restart: true }),
    ]);

    // Whichever run starts last takes over the progress rows, so the other
    // one either finished first or stops with an error at its next chunk.
    // Which one starts last is a race between the two.
    const settled = outcomes.map((outcome) => (outcome.status === 'rejected' ? String(outcome.reason) : 'fulfilled'));
    for (const outcome of settled) {
      expect(outcome).toMatch(/^fulfilled$|stopped: another rebuild run took over its progress/);
    }
    expect(settled).toContain('fulfilled');
    await expectCacheEqualsOracle();
    expect(await readUnfinishedProgress()).toEqual([]);
  });
});

describe('search during drains and rebuilds', () => {
  test('exact search never misses objects', async () => {
    await outbox.rebuild();
    const searcher = createSearchOutbox({ db: database.connect({ max: 1 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const drainer = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const rebuilder = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const watched = [7, 150, 333];

    let running = true;
    // Drains rebuild the watched sites again and again: the description
    // changes, the name stays, so every rebuild replaces the name row.
    const draining = (async () => {
      for (let round = 1; running; round += 1) {
        await drainer.transaction(async (trx) => {
          await trx.updateTable('site').set({ description: `round ${round}` }).where('id', 'in', watched).execute();
          await drainer.mark(trx, 'dcim.site', watched);
        });
        await drainer.drain();
      }
    })();
    const rebuilding = (async () => {
      while (running) await rebuilder.rebuild({ objectTypes: ['dcim.site'], chunkSize: 50, restart: true });
    })();
    const misses: string[] = [];
    let searches = 0;
    try {
      for (let round = 0; round < 150; round += 1) {
        const id = watched[round % watched.length] ?? 7;
        const results = await searcher.search({ query: `Site ${id}`, lookup: 'exact' });
        searches += 1;
        const found = results.map((result) => `${result.objectType}:${result.objectId}`);
        if (!found.includes(`dcim.site:${id}`)) misses.push(`round ${round}: Site ${id} returned ${JSON.stringify(found)}`);
      }
    } finally {
      running = false;
      await Promise.all([draining, rebuilding]);
    }

    expect(searches).toBe(150);
    expect(misses).toEqual([]);
    await expectCacheEqualsOracle();
  });
});

describe('rebuild stale-row removal', () => {
  test('rebuild and drain never deadlock', async () => {
    await sql`DELETE FROM site WHERE id > 30`.execute(database.db);
    await outbox.rebuild({ objectTypes: ['dcim.site'] });
    // A trigger that sleeps before each cache row delete widens the window
    // in which the drain and the rebuild both delete rows of the same
    // objects. Each row lock is taken before the sleep.
    await sql`
      CREATE FUNCTION slow_cache_delete() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM pg_sleep(0.005);
        RETURN OLD;
      END
      $$;
      CREATE TRIGGER slow_cache_delete BEFORE DELETE ON search_cache FOR EACH ROW EXECUTE FUNCTION slow_cache_delete();
    `.execute(database.db);
    let outcomes: string[];
    try {
      await sql`DELETE FROM site`.execute(database.db);
      // Marked from the highest id down, so the drain deletes the cache rows
      // in the opposite order of the rebuild's scan of the cache.
      await outbox.markDeleted(database.db, 'dcim.site', Array.from({ length: 30 }, (_, position) => 30 - position));
      const drainer = namedOutbox('rebuild_faults_drainer');
      const rebuilder = namedOutbox('rebuild_faults_rebuilder');

      const settled = await Promise.allSettled([drainer.drain(), rebuilder.rebuild({ objectTypes: ['dcim.site'] })]);
      outcomes = settled.map((outcome) => (outcome.status === 'rejected' ? String(outcome.reason) : 'fulfilled'));
    } finally {
      await sql`DROP TRIGGER slow_cache_delete ON search_cache; DROP FUNCTION slow_cache_delete()`.execute(database.db);
    }

    // A deadlock (40P01) would fail the drain batch or the rebuild. The
    // rebuild takes the object locks before it deletes stale rows, as the
    // drain does, so one waits for the other instead.
    expect(outcomes).toEqual(['fulfilled', 'fulfilled']);
    await outbox.drain();
    await outbox.rebuild({ objectTypes: ['dcim.site'] });
    // Only the sites were ever rebuilt, and every one of them is deleted.
    expect(await readSortedCache(database.db)).toEqual([]);
    expect(await expectedCacheLines(database.db, { objectTypes: ['dcim.site'] })).toEqual([]);
    expect(await countOutbox(database.db)).toBe(0);
  });
});

describe('rebuild resumption', () => {
  test('resume skips finished types', async () => {
    await sql`DELETE FROM site WHERE id > 40`.execute(database.db);
    // The first run finishes dcim.site, then stops after the first chunk of
    // dcim.region, like a Lambda invocation that reaches its deadline.
    const controller = new AbortController();
    const first = await outbox.rebuild({
      chunkSize: 1,
      signal: controller.signal,
      onProgress: (progress) => {
        if (progress.objectType === 'dcim.region') controller.abort();
      },
    });
    expect(first.aborted).toBe(true);
    expect(first.types.map((type) => type.objectType)).toEqual(['dcim.site']);

    const events: RebuildProgress[] = [];
    const second = await outbox.rebuild({ chunkSize: 1, onProgress: (progress) => events.push(progress) });

    expect(second.aborted).toBe(false);
    // Resuming means continuing with dcim.region. Rebuilding the sites again
    // repeats finished work, so runs that always stop at the same point, such
    // as Lambda invocations with the same deadline, would never reach the later types.
    const siteEvents = events.filter((progress) => progress.objectType === 'dcim.site');
    expect(siteEvents.length, 'progress events of dcim.site in the resumed run').toBe(0);
    expect(events[0]).toMatchObject({ objectType: 'dcim.region', done: 2, total: 3 });
    await expectCacheEqualsOracle();
    expect(await readUnfinishedProgress()).toEqual([]);
  });
});

describe('lock table exhaustion', () => {
  // A full shared lock table also fails the lock requests of other sessions
  // on the server, so this test runs on a server of its own.
  let server: LocalPostgres;
  let isolatedDb: Kysely<any>;

  beforeAll(async () => {
    server = await startLocalPostgres({ databaseUrl: null });
    // Stopping the server ends connections that the pool is still closing.
    const pool = openTolerantPool(await server.createDatabase('chunk_size'), { max: 2 });
    isolatedDb = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
  });

  afterAll(async () => {
    await isolatedDb?.destroy();
    await server?.stop();
  });

  test('maximum chunk size rebuilds', async () => {
    // chunkSize accepts up to 50000. Each object of a chunk takes one
    // advisory lock in the chunk's transaction, and PostgreSQL's shared lock
    // table holds about max_locks_per_transaction (64) per connection slot,
    // 12,800 on this server of 200 connections. A chunk that runs out is
    // rolled back and retried with half the size.
    const WIDGETS = 50_000;
    const indexes = [{ objectType: 'test.widget', table: 'widget', fields: [{ name: 'name', weight: 100 }] }];
    const logLines: LogLine[] = [];
    const isolated = createSearchOutbox({ db: isolatedDb, indexes, dispatcher: 'none', logger: capturingLogger(logLines) });
    await isolated.migrate();
    await sql`CREATE TABLE widget (id bigint PRIMARY KEY, name text NOT NULL)`.execute(isolatedDb);
    await sql`INSERT INTO widget SELECT i, 'Widget ' || i FROM generate_series(1, ${WIDGETS}) AS i`.execute(isolatedDb);

    const summary = await isolated.rebuild({ chunkSize: 50_000 });

    expect(summary.types[0]).toMatchObject({ objectType: 'test.widget', objects: WIDGETS, rows: WIDGETS });
    const halvings = logLines.filter((line) => line.message.startsWith('rebuild chunk ran out of shared memory'));
    expect(halvings.length).toBeGreaterThan(0);
    expect(halvings[0]?.attributes).toMatchObject({ chunkSize: 50_000, nextChunkSize: 25_000 });
    const cached = await sql<{ count: string }>`SELECT count(*) AS count FROM search_cache`.execute(isolatedDb);
    expect(Number(cached.rows[0]?.count)).toBe(WIDGETS);
  });
  test('drain halves a batch the lock table cannot hold', async () => {
    // Another session fills the lock table with session-level advisory
    // locks, in the two-key space that object locks never use, and then
    // frees 3,000 of them. A batch of 10,000 objects cannot get its locks,
    // and a batch of 2,500 can.
    const WIDGETS = 10_000;
    const indexes = [{ objectType: 'test.gadget', table: 'gadget', fields: [{ name: 'name', weight: 100 }] }];
    const logLines: LogLine[] = [];
    const isolated = createSearchOutbox({ db: isolatedDb, indexes, dispatcher: 'none', logger: capturingLogger(logLines) });
    await isolated.migrate();
    await sql`CREATE TABLE gadget (id bigint PRIMARY KEY, name text NOT NULL)`.execute(isolatedDb);
    await sql`INSERT INTO gadget SELECT i, 'Gadget ' || i FROM generate_series(1, ${WIDGETS}) AS i`.execute(isolatedDb);
    await isolated.mark(isolatedDb, 'test.gadget', Array.from({ length: WIDGETS }, (_, position) => position + 1));

    const holder = new pg.Client({ connectionString: server.urlFor('chunk_size') });
    await holder.connect();
    try {
      await fillLockTable(holder, { classId: 7002, freeEntries: 3000 });
      const summary = await isolated.drain({ batchSize: 10_000 });

      expect(summary).toMatchObject({ rebuilt: WIDGETS, failed: 0, remaining: 0 });
    } finally {
      await holder.end();
    }
    const halvings = logLines.filter((line) => line.message.startsWith('drain batch ran out of shared memory'));
    expect(halvings.length).toBeGreaterThan(0);
    expect(halvings[0]?.attributes).toMatchObject({ batchSize: 10_000, nextBatchSize: 5_000 });
    const cached = await sql<{ count: string }>`
      SELECT count(*) AS count FROM search_cache WHERE object_type = 'test.gadget'
    `.execute(isolatedDb);
    expect(Number(cached.rows[0]?.count)).toBe(WIDGETS);
  });

});
