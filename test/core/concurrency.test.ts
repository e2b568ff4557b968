import { createSearchOutbox, type DrainSummary, type SearchOutbox } from '@search-outbox/core';
import { sql, type ControlledTransaction, type Kysely } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';

/** A lock request of this test's database that PostgreSQL has not granted. */
interface LockWait {
  readonly pid: number;
  readonly locktype: string;
  readonly mode: string;
  readonly query: string;
  readonly relation: string | null;
}

/** Polls every 10 ms, at most this many times (about 10 s), for a state that the test is waiting for. */
const MAX_POLLS = 1_000;

let database: TestDatabase;
let outbox: SearchOutbox;
let observer: Kysely<any>;

beforeAll(async () => {
  database = await createTestDatabase('concurrency');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
  observer = database.connect({ max: 1 });
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site, region`.execute(database.db);
});

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, offset) => from + offset);
}

/**
 * Lock requests in this test's database that are not granted, from
 * `pg_locks`. Relation extension locks ("extend") are left out: concurrent
 * inserts into one table take turns adding pages, a wait of microseconds
 * that ends without any transaction committing, unlike a wait on another
 * transaction's marks.
 */
async function readUngrantedLocks(): Promise<LockWait[]> {
  const result = await sql<LockWait>`
    SELECT l.pid, l.locktype, l.mode, a.query, l.relation::regclass::text AS relation
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database() AND l.locktype <> 'extend'
  `.execute(observer);
  return result.rows;
}

/** Sessions of this test's database that wait for a lock other than a relation extension lock, from `pg_stat_activity`. */
async function readLockWaitingSessions(): Promise<{ pid: number; wait_event: string; query: string }[]> {
  const result = await sql<{ pid: number; wait_event: string; query: string }>`
    SELECT pid, wait_event, query FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event <> 'extend'
  `.execute(observer);
  return result.rows;
}

async function countOpenTransactions(): Promise<number> {
  const result = await sql<{ count: string }>`
    SELECT count(*) AS count FROM pg_stat_activity
    WHERE datname = current_database() AND state = 'idle in transaction'
  `.execute(observer);
  return Number(result.rows[0]?.count ?? 0);
}

/**
 * Waits until `work` settles, and returns the lock waits seen while it ran.
 * Returns early with the waits when a session waits for a lock, because a
 * blocked mark would wait until the test ends the blocking transaction.
 */
async function observeLockWaits(work: Promise<unknown>): Promise<LockWait[]> {
  let settled = false;
  let failure: unknown;
  const tracked = work.then(
    () => {
      settled = true;
    },
    (error: unknown) => {
      settled = true;
      failure = error;
    },
  );
  for (let poll = 0; !settled; poll += 1) {
    const waits = await readUngrantedLocks();
    if (waits.length > 0) return waits;
    if (poll >= MAX_POLLS) throw new Error('marks neither finished nor waited for a lock within the polling limit');
    await delay(10);
  }
  await tracked;
  if (failure !== undefined) throw failure;
  return [];
}

/**
 * Awaits `work`, but throws with the lock waits as soon as a session of this
 * test's database waits for a lock before `work` settles, so that a step
 * blocked by a transaction the test still holds fails instead of hanging.
 */
async function awaitWithoutLockWait<T>(work: Promise<T>, description: string): Promise<T> {
  const waits = await observeLockWaits(work);
  if (waits.length > 0) throw new Error(`${description} waited for a lock: ${JSON.stringify(waits)}`);
  return work;
}

/** Rolls back the transactions that are neither committed nor rolled back, so a failed test leaves no lock behind. */
async function rollbackOpen(transactions: readonly ControlledTransaction<any>[]): Promise<void> {
  await Promise.allSettled(
    transactions.filter((trx) => !trx.isCommitted && !trx.isRolledBack).map((trx) => trx.rollback().execute()),
  );
}

/** Waits until some session of this test's database waits for a lock, such as a drain blocked by the test. */
async function waitForLockWait(description: string): Promise<void> {
  for (let poll = 0; poll < MAX_POLLS; poll += 1) {
    if ((await readUngrantedLocks()).length > 0) return;
    await delay(10);
  }
  throw new Error(`timed out waiting for ${description} to wait for a lock`);
}

async function readPendingTransactionIds(): Promise<string[]> {
  const result = await sql<{ transaction_id: string }>`
    SELECT transaction_id::text AS transaction_id FROM search_outbox.outbox WHERE state = 'pending' ORDER BY id
  `.execute(database.db);
  return result.rows.map((row) => row.transaction_id);
}

/** Commits a change of site 1's name with its mark, and returns the id of the writing transaction. */
async function renameSiteOne(name: string): Promise<string> {
  return database.db.transaction().execute(async (trx) => {
    await trx.updateTable('site').set({ name }).where('id', '=', 1).execute();
    const marked = await outbox.mark(trx, 'dcim.site', 1);
    return marked.transactionId ?? 'none';
  });
}

describe('concurrent writers', () => {
  const WRITERS = 8;
  const SITE_IDS = range(1, 20);

  test('marking the same objects never wait', async () => {
    await insertSites(database.db, SITE_IDS.map((id) => fullSite(id, `Site ${id}`)));
    const writers = database.connect({ max: WRITERS });
    const transactions: ControlledTransaction<any>[] = await Promise.all(
      range(1, WRITERS).map(() => writers.startTransaction().execute()),
    );

    // Every round runs in all transactions at once, and every transaction
    // stays open until all rounds are done, so each mark meets the
    // uncommitted marks of the same objects from the other seven.
    const rounds: ((trx: ControlledTransaction<any>) => Promise<unknown>)[] = [
      (trx) => outbox.mark(trx, 'dcim.site', 1),
      (trx) => outbox.mark(trx, 'dcim.site', SITE_IDS),
      (trx) => outbox.markDeleted(trx, 'dcim.site', [19, 20]),
      (trx) => outbox.mark(trx, 'dcim.site', [...SITE_IDS].reverse()),
      (trx) => outbox.mark(trx, 'dcim.site', 1),
    ];
    const waits: LockWait[] = [];
    let openDuringMarks = 0;
    let ungrantedWhileOpen: LockWait[] = [];
    let lockWaitingWhileOpen: unknown[] = [];
    try {
      for (const round of rounds) {
        waits.push(...(await observeLockWaits(Promise.all(transactions.map((trx) => round(trx))))));
        if (waits.length > 0) break;
      }
      openDuringMarks = await countOpenTransactions();
      ungrantedWhileOpen = await readUngrantedLocks();
      lockWaitingWhileOpen = await readLockWaitingSessions();
    } finally {
      if (waits.length > 0) await Promise.allSettled(transactions.map((trx) => trx.rollback().execute()));
    }

    expect(waits).toEqual([]);
    expect(openDuringMarks).toBe(WRITERS);
    expect(ungrantedWhileOpen).toEqual([]);
    expect(lockWaitingWhileOpen).toEqual([]);

    await Promise.all(transactions.map((trx) => trx.commit().execute()));
    const perTransaction = await sql<{ transactions: string; rows: string; duplicates: string }>`
      SELECT count(DISTINCT transaction_id) AS transactions, count(*) AS rows,
             count(*) - count(DISTINCT (transaction_id, target_schema, object_type, object_id)) AS duplicates
      FROM search_outbox.outbox
    `.execute(database.db);
    expect(perTransaction.rows[0]).toEqual({
      transactions: String(WRITERS),
      rows: String(WRITERS * SITE_IDS.length),
      duplicates: '0',
    });

    const summary = await outbox.drain();
    expect(summary.batches).toBe(1);
    expect(summary.claimed).toBe(WRITERS * SITE_IDS.length);
    expect(summary.objects).toBe(SITE_IDS.length);
    expect(summary.rebuilt).toBe(SITE_IDS.length);
    expect(await readSortedCache(database.db)).toEqual(await expectedCacheLines(database.db));
    expect(await countOutbox(database.db)).toBe(0);
  });
});

describe('mark made after a drain claimed the object', () => {
  test('survives when committed before the drain reads', async () => {
    await insertSites(database.db, [fullSite(1, 'Old name')]);
    await outbox.mark(database.db, 'dcim.site', 1);
    await outbox.drain();
    await outbox.mark(database.db, 'dcim.site', 1);

    // A row lock on the cached rows of site 1 stops the drain at its DELETE
    // from the cache: after the claim, before it reads the live site.
    const blocker = await database.connect({ max: 1 }).startTransaction().execute();
    await sql`SELECT 1 FROM search_cache WHERE object_type = 'dcim.site' AND object_id = '1' FOR UPDATE`.execute(blocker);
    const drainer = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const blockedDrain = drainer.drain();
    let writerTransactionId: string;
    try {
      await waitForLockWait('the drain');
      writerTransactionId = await renameSiteOne('New name');
    } finally {
      await blocker.rollback().execute();
    }
    const first = await blockedDrain;

    expect(first.claimed).toBe(1);
    expect(await readPendingTransactionIds()).toEqual([writerTransactionId]);

    const second = await outbox.drain();
    expect(second.claimed).toBe(1);
    expect(await readCache(database.db)).toContain('dcim.site|1|name|str|New name|100');
    expect(await readSortedCache(database.db)).toEqual(await expectedCacheLines(database.db));
  });

  test('survives when committed after the drain read', async () => {
    await insertSites(database.db, [fullSite(1, 'Old name')]);
    await outbox.mark(database.db, 'dcim.site', 1);

    // Site 1 has no cache rows yet. An uncommitted cache row with the key of
    // its name stops the drain inside its INSERT ... SELECT: the statement
    // has already read the live site, so the drain writes the old name.
    const blocker = await database.connect({ max: 1 }).startTransaction().execute();
    await sql`
      INSERT INTO search_cache (object_type, object_id, field, type, value, weight)
      VALUES ('dcim.site', '1', 'name', 'str', 'placeholder', 1)
    `.execute(blocker);
    const drainer = createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    const blockedDrain = drainer.drain();
    let writerTransactionId: string;
    try {
      await waitForLockWait('the drain');
      writerTransactionId = await renameSiteOne('New name');
    } finally {
      await blocker.rollback().execute();
    }
    const first = await blockedDrain;

    expect(first.claimed).toBe(1);
    expect(await readPendingTransactionIds()).toEqual([writerTransactionId]);

    const second = await outbox.drain();
    expect(second.claimed).toBe(1);
    expect(await readCache(database.db)).toContain('dcim.site|1|name|str|New name|100');
    expect(await readSortedCache(database.db)).toEqual(await expectedCacheLines(database.db));
  });

  test('is drained while another claim is open', async () => {
    await insertSites(database.db, [fullSite(1, 'Old name')]);
    await outbox.mark(database.db, 'dcim.site', 1);

    // The claim query of a drain, run by hand and kept open, acts as a
    // drainer that claimed site 1 and has not finished.
    const claimer = await database.connect({ max: 1 }).startTransaction().execute();
    const claimed = await sql<{ id: string }>`
      SELECT id FROM search_outbox.outbox WHERE state = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED
    `.execute(claimer);
    let concurrent: DrainSummary;
    try {
      await awaitWithoutLockWait(renameSiteOne('New name'), 'the writer');
      concurrent = await awaitWithoutLockWait(outbox.drain(), 'the drain');
    } finally {
      await rollbackOpen([claimer]);
    }

    expect(claimed.rows).toHaveLength(1);
    expect(concurrent.claimed).toBe(1);
    expect(await countOutbox(database.db, 'pending')).toBe(1);
    expect(await readCache(database.db)).toContain('dcim.site|1|name|str|New name|100');
  });
});

describe('transactions committing out of start order', () => {
  type DrainPoint = 'afterFirstMark' | 'afterSecondMark' | 'betweenCommits';
  const cases: { name: string; drainPoints: DrainPoint[] }[] = [
    { name: 'with no drain before the last commit', drainPoints: [] },
    { name: 'with a drain between the commits', drainPoints: ['betweenCommits'] },
    { name: 'with drains at every step', drainPoints: ['afterFirstMark', 'afterSecondMark', 'betweenCommits'] },
  ];

  test.each(cases)('are all drained $name', async ({ drainPoints }) => {
    await insertSites(database.db, [1, 2, 3].map((id) => fullSite(id, `Site ${id}`)));
    await outbox.mark(database.db, 'dcim.site', [1, 2, 3]);
    await outbox.drain();
    const drainAt = async (point: DrainPoint): Promise<void> => {
      if (drainPoints.includes(point)) await outbox.drain();
    };

    const writers = database.connect({ max: 2 });
    // Both BEGINs run up front, but the first writer writes first and so
    // takes the lower transaction id and the lower outbox row id.
    const first = await writers.startTransaction().execute();
    const second = await writers.startTransaction().execute();
    try {
      await first.updateTable('site').set({ name: 'First writer' }).where('id', '=', 1).execute();
      await awaitWithoutLockWait(outbox.mark(first, 'dcim.site', 1), 'the first writer');
      await awaitWithoutLockWait(drainAt('afterFirstMark'), 'the drain after the first mark');

      await second.updateTable('site').set({ description: 'Second writer' }).where('id', '=', 2).execute();
      await second.deleteFrom('site').where('id', '=', 3).execute();
      await insertSites(second, [fullSite(4, 'Created by the second writer')]);
      await awaitWithoutLockWait(outbox.mark(second, 'dcim.site', [1, 2, 4]), 'the second writer');
      await awaitWithoutLockWait(outbox.markDeleted(second, 'dcim.site', 3), 'the second writer');
      await awaitWithoutLockWait(drainAt('afterSecondMark'), 'the drain after the second mark');

      await second.commit().execute();
      await awaitWithoutLockWait(drainAt('betweenCommits'), 'the drain between the commits');
      await first.commit().execute();
    } finally {
      await rollbackOpen([first, second]);
    }
    await outbox.drain();

    expect(await readCache(database.db)).toContain('dcim.site|1|name|str|First writer|100');
    expect(await readCache(database.db)).toContain('dcim.site|2|description|str|Second writer|500');
    expect(await readSortedCache(database.db)).toEqual(await expectedCacheLines(database.db));
    expect(await countOutbox(database.db)).toBe(0);
  });
});

describe('several drainers', () => {
  const SITES = 40;
  const DRAINERS = 4;

  test('with concurrent writers end equal to a full rebuild', async () => {
    await insertSites(database.db, range(1, SITES).map((id) => fullSite(id, `Site ${id}`)));
    for (let round = 0; round < 3; round += 1) {
      await Promise.all(
        range(1, SITES).map((id) =>
          database.db.transaction().execute(async (trx) => {
            await trx.updateTable('site').set({ description: `round ${round}` }).where('id', '=', id).execute();
            await outbox.mark(trx, 'dcim.site', id);
          }),
        ),
      );
    }

    const drainers = range(1, DRAINERS).map(() =>
      createSearchOutbox({ db: database.connect({ max: 2 }), indexes: FIXTURE_INDEXES, dispatcher: 'none' }),
    );
    const writerDb = database.connect({ max: 2 });
    const writer = async (offset: number): Promise<void> => {
      for (let step = 0; step < 30; step += 1) {
        const id = ((step * 7 + offset) % SITES) + 1;
        await writerDb.transaction().execute(async (trx) => {
          if (step % 5 === 0) {
            await trx.deleteFrom('site').where('id', '=', id).execute();
            await outbox.markDeleted(trx, 'dcim.site', id);
          } else if (step % 5 === 1) {
            await trx.deleteFrom('site').where('id', '=', id).execute();
            await insertSites(trx, [fullSite(id, `Re-created ${id} at ${step}`)]);
            await outbox.mark(trx, 'dcim.site', id);
          } else {
            const ids = [id, (id % SITES) + 1];
            await trx.updateTable('site').set({ comments: `step ${step}` }).where('id', 'in', ids).execute();
            await outbox.mark(trx, 'dcim.site', ids);
          }
        });
      }
    };
    const drainLoop = async (drainer: SearchOutbox) => {
      const summaries = [];
      for (let run = 0; run < 10; run += 1) summaries.push(await drainer.drain({ batchSize: 5 }));
      return summaries;
    };

    const results = await Promise.all([writer(0), writer(3), ...drainers.map((drainer) => drainLoop(drainer))]);
    await outbox.drain();

    const summaries = results.flatMap((result) => result ?? []);
    expect(summaries.reduce((total, summary) => total + summary.failed, 0)).toBe(0);
    expect(summaries.reduce((total, summary) => total + summary.claimed, 0)).toBeGreaterThan(0);
    const duplicates = await sql<{ key: string }>`
      SELECT object_type || '|' || object_id || '|' || field AS key FROM search_cache
      GROUP BY object_type, object_id, field HAVING count(*) > 1
    `.execute(database.db);
    expect(duplicates.rows).toEqual([]);
    const drained = await readSortedCache(database.db);
    expect(drained).toEqual(await expectedCacheLines(database.db));
    expect(await countOutbox(database.db)).toBe(0);

    await outbox.rebuild();
    expect(await readSortedCache(database.db)).toEqual(drained);
  });
});
