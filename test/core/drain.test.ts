import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';

let database: TestDatabase;
let outbox: SearchOutbox;
let logLines: LogLine[];

beforeAll(async () => {
  database = await createTestDatabase('drain');
  logLines = [];
  outbox = createSearchOutbox({
    db: database.db,
    indexes: FIXTURE_INDEXES,
    dispatcher: 'none',
    logger: capturingLogger(logLines),
    retry: { maxAttempts: 3, backoffBaseMs: 0, backoffMaxMs: 0 },
  });
  await outbox.migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await database.destroy();
});

beforeEach(async () => {
  logLines.length = 0;
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site, region, virtual_chassis`.execute(database.db);
});

describe('drain', () => {
  test('coalesces marks of many transactions into one rebuild', async () => {
    await insertSites(database.db, [fullSite(1, 'Alpha')]);
    for (let round = 0; round < 10; round += 1) {
      await outbox.transaction(async (trx) => {
        await trx.updateTable('site').set({ description: `round ${round}` }).where('id', '=', 1).execute();
        await outbox.mark(trx, 'dcim.site', 1);
      });
    }
    const summary = await outbox.drain();

    expect(summary.claimed).toBe(10);
    expect(summary.objects).toBe(1);
    expect(summary.rebuilt).toBe(1);
    expect(await readCache(database.db)).toContain('dcim.site|1|description|str|round 9|500');
  });

  test('stores a foreign key as the related name', async () => {
    await sql`INSERT INTO virtual_chassis (id, name) VALUES (1, 'stack-1')`.execute(database.db);
    await sql`INSERT INTO device (id, name, virtual_chassis_id, mtu) VALUES (1, 'switch-1', 1, 0)`.execute(database.db);
    await outbox.mark(database.db, 'dcim.device', 1);
    await outbox.drain();

    expect(await readCache(database.db)).toEqual([
      'dcim.device|1|name|str|switch-1|100',
      'dcim.device|1|virtual_chassis|str|stack-1|200',
    ]);
  });

  test('skips empty, NULL and zero values', async () => {
    await insertSites(database.db, [
      { id: 1, name: 'Sparse', facility: '', description: null, custom_field_data: { code: '', rank: 0 } },
    ]);
    await outbox.mark(database.db, 'dcim.site', 1);
    await outbox.drain();

    expect(await readCache(database.db)).toEqual(['dcim.site|1|name|str|Sparse|100']);
  });

  test('indexes custom fields as cf_ names', async () => {
    await insertSites(database.db, [{ id: 1, name: 'Custom', custom_field_data: { code: 'ABC01', rank: 7 } }]);
    await outbox.mark(database.db, 'dcim.site', 1);
    await outbox.drain();

    expect(await readCache(database.db)).toEqual([
      'dcim.site|1|cf_code|str|ABC01|1000',
      'dcim.site|1|cf_rank|int|7|1000',
      'dcim.site|1|name|str|Custom|100',
    ]);
  });

  test('removes an object that no longer matches its index', async () => {
    await sql`INSERT INTO device (id, name) VALUES (1, 'old-router')`.execute(database.db);
    await outbox.mark(database.db, 'dcim.device', 1);
    await outbox.drain();
    await sql`UPDATE device SET decommissioned = true WHERE id = 1`.execute(database.db);
    await outbox.mark(database.db, 'dcim.device', 1);
    const summary = await outbox.drain();

    expect(summary.removed).toBe(1);
    expect(await readCache(database.db)).toEqual([]);
  });

  test('runs the same statements for 5 and 400 objects', async () => {
    const statementsFor = async (count: number): Promise<number> => {
      await sql`TRUNCATE search_outbox.outbox, search_cache, site CASCADE`.execute(database.db);
      const sites = Array.from({ length: count }, (_, position) => fullSite(position + 1, `Site ${position + 1}`));
      await insertSites(database.db, sites);
      await outbox.mark(
        database.db,
        'dcim.site',
        sites.map((site) => site.id),
      );
      let statements = 0;
      const logged = new Kysely<any>({
        dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url, max: 1 }) }),
        log: (event) => {
          if (event.level === 'query') statements += 1;
        },
      });
      try {
        const counted = createSearchOutbox({ db: logged, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
        const summary = await counted.drain({ batchSize: 1000 });
        expect(summary.rebuilt).toBe(count);
      } finally {
        await logged.destroy();
      }
      return statements;
    };

    const small = await statementsFor(5);
    const large = await statementsFor(400);
    expect(large).toBe(small);
    // BEGIN, claim, relation check, object locks, SAVEPOINT, DELETE and
    // INSERT of cache rows, RELEASE, outbox retire, COMMIT, remaining count.
    expect(small).toBe(11);
  });
});

describe('failing objects', () => {
  async function seedOneBadSite(): Promise<void> {
    await insertSites(database.db, [
      fullSite(1, 'Good One'),
      { id: 2, name: 'Bad Rank', custom_field_data: { rank: 'not a number' } },
      fullSite(3, 'Good Three'),
    ]);
    await outbox.mark(database.db, 'dcim.site', [1, 2, 3]);
  }

  test('do not hold up the rest of the batch', async () => {
    await seedOneBadSite();
    const summary = await outbox.drain();

    expect(summary.rebuilt).toBe(2);
    expect(summary.failed).toBe(1);
    expect(await outbox.search({ query: 'Good' })).toHaveLength(2);
  });

  test('keep their last error and attempt count', async () => {
    await seedOneBadSite();
    await outbox.drain({ maxBatches: 1 });
    const rows = await sql<{ object_id: string; attempts: number; last_error: string; state: string }>`
      SELECT object_id, attempts, last_error, state FROM search_outbox.outbox
    `.execute(database.db);

    expect(rows.rows).toHaveLength(1);
    expect(rows.rows[0]?.object_id).toBe('2');
    expect(rows.rows[0]?.attempts).toBe(1);
    expect(rows.rows[0]?.state).toBe('pending');
    expect(rows.rows[0]?.last_error).toMatch(/invalid input syntax for type numeric/);
  });

  test('become dead after the attempt limit and retry revives them', async () => {
    await seedOneBadSite();
    const drains = [await outbox.drain(), await outbox.drain(), await outbox.drain()];

    expect(drains.map((summary) => summary.failed)).toEqual([1, 1, 1]);
    expect(drains.map((summary) => summary.dead)).toEqual([0, 0, 1]);
    expect(await countOutbox(database.db, 'dead')).toBe(1);
    expect(logLines.some((line) => line.level === 'error' && line.attributes?.objectId === '2')).toBe(true);

    await sql`UPDATE site SET custom_field_data = '{"rank": 4}' WHERE id = 2`.execute(database.db);
    await expect(outbox.retry({ objectType: 'dcim.site', objectIds: ['two'] })).rejects.toThrow(
      /Invalid id: "two" must be an integer from -9223372036854775808 to 9223372036854775807 \(key type bigint\)/,
    );
    const retried = await outbox.retry({ objectType: 'dcim.site', objectIds: ['002'] });
    expect(retried.retried).toBe(1);
    const after = await outbox.drain();
    expect(after.rebuilt).toBe(1);
    expect(await countOutbox(database.db)).toBe(0);
    expect(await readCache(database.db)).toContain('dcim.site|2|cf_rank|int|4|1000');
  });

  test('leave no dead row once a later mark drains', async () => {
    await seedOneBadSite();
    await outbox.drain();
    await outbox.drain();
    await outbox.drain();
    expect(await countOutbox(database.db, 'dead')).toBe(1);

    // Still failing: the new mark fails too, and the dead row stays.
    await outbox.mark(database.db, 'dcim.site', 2);
    const stillFailing = await outbox.drain();
    expect(stillFailing).toMatchObject({ failed: 1, deadRetired: 0 });
    expect(await countOutbox(database.db, 'dead')).toBe(1);

    // Fixed: the next rebuild succeeds and retires the dead row with the pending ones.
    await sql`UPDATE site SET custom_field_data = '{"rank": 4}' WHERE id = 2`.execute(database.db);
    await outbox.mark(database.db, 'dcim.site', 2);
    await sql`UPDATE search_outbox.outbox SET available_at = now() WHERE state = 'pending'`.execute(database.db);
    const fixed = await outbox.drain();

    expect(fixed).toMatchObject({ rebuilt: 1, failed: 0, deadRetired: 1 });
    expect(await countOutbox(database.db)).toBe(0);
    expect((await outbox.status()).dead).toBe(0);
    expect(await readCache(database.db)).toContain('dcim.site|2|cf_rank|int|4|1000');
  });

  test('keep the dead rows of other objects', async () => {
    await seedOneBadSite();
    await outbox.drain();
    await outbox.drain();
    await outbox.drain();
    await outbox.mark(database.db, 'dcim.site', [1, 3]);
    await outbox.mark(database.db, 'dcim.device', 2);
    const summary = await outbox.drain();

    expect(summary.deadRetired).toBe(0);
    expect(await countOutbox(database.db, 'dead')).toBe(1);
  });

  test('wait for their backoff before the next attempt', async () => {
    const slow = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
      retry: { maxAttempts: 5, backoffBaseMs: 60_000 },
    });
    await seedOneBadSite();
    const first = await slow.drain();
    const second = await slow.drain();

    expect(first.failed).toBe(1);
    expect(second.claimed).toBe(0);
    expect(second.remaining).toBe(1);
    const status = await slow.status();
    expect(status.failed).toBe(1);
  });
});

describe('drain limits', () => {
  test('stops after maxBatches and reports the remainder', async () => {
    const sites = Array.from({ length: 30 }, (_, position) => fullSite(position + 1, `Batch ${position + 1}`));
    await insertSites(database.db, sites);
    await outbox.mark(
      database.db,
      'dcim.site',
      sites.map((site) => site.id),
    );
    const summary = await outbox.drain({ batchSize: 10, maxBatches: 2 });

    expect(summary.stoppedBy).toBe('maxBatches');
    expect(summary.claimed).toBe(20);
    expect(summary.remaining).toBe(10);
  });

  test('stops before a deadline that has passed', async () => {
    await insertSites(database.db, [fullSite(1, 'Late')]);
    await outbox.mark(database.db, 'dcim.site', 1);
    const summary = await outbox.drain({ deadline: Date.now() - 1 });

    expect(summary.stoppedBy).toBe('deadline');
    expect(summary.claimed).toBe(0);
    expect(summary.remaining).toBe(1);
  });

  test('runs a batch within a short time budget', async () => {
    await insertSites(database.db, [fullSite(1, 'Quick')]);
    await outbox.mark(database.db, 'dcim.site', 1);
    const summary = await outbox.drain({ timeBudgetMs: 1 });

    expect(summary.claimed).toBe(1);
    expect(summary.remaining).toBe(0);
  });

  test('rejects a callback that is no function', async () => {
    await expect(outbox.drain({ onProgress: 5 as never })).rejects.toThrow(/Invalid onProgress: 5 must be a function/);
    await expect(outbox.drain({ deadline: Number.NaN })).rejects.toThrow(/Invalid deadline: NaN must be a finite number/);
  });

  test('rejects a batch size out of range', async () => {
    await expect(outbox.drain({ batchSize: 0 })).rejects.toThrow(/Invalid batchSize: 0 must be an integer from 1 to 10000/);
  });

  test('retires rows of an undeclared type with a log line', async () => {
    await sql`
      INSERT INTO search_outbox.outbox (transaction_id, target_schema, object_type, object_id, operation)
      VALUES (pg_current_xact_id(), 'public', 'legacy.widget', '1', 'upsert')
    `.execute(database.db);
    const summary = await outbox.drain();

    expect(summary.skipped).toBe(1);
    expect(await countOutbox(database.db)).toBe(0);
    expect(logLines.some((line) => line.level === 'warn' && line.message.includes('legacy.widget'))).toBe(true);
  });
});

describe('transaction helper', () => {
  test('drains the committed objects inline', async () => {
    const inline = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    await inline.transaction(async (trx) => {
      await insertSites(trx, [fullSite(1, 'Inline Site')]);
      await inline.mark(trx, 'dcim.site', 1);
    });

    expect(await inline.search({ query: 'Inline Site' })).toHaveLength(1);
    expect(await countOutbox(database.db)).toBe(0);
    expect(inline.stats).toEqual({ dispatched: 1, dispatchFailures: 0 });
  });

  test('leaves other transactions rows to the drainer', async () => {
    const inline = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    await insertSites(database.db, [fullSite(1, 'Other'), fullSite(2, 'Mine')]);
    await inline.mark(database.db, 'dcim.site', 1);
    await inline.transaction(async (trx) => {
      await inline.mark(trx, 'dcim.site', 2);
    });

    expect(await countOutbox(database.db)).toBe(1);
    expect(await inline.search({ query: 'Other' })).toHaveLength(0);
  });

  test('never raises after the commit when the inline drain fails', async () => {
    const failures: LogLine[] = [];
    const inline = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      logger: capturingLogger(failures),
      retry: { backoffBaseMs: 0 },
    });
    await sql`ALTER TABLE search_cache RENAME TO search_cache_away`.execute(database.db);
    try {
      await sql`CREATE TABLE search_cache (object_type text)`.execute(database.db);
      const result = await inline.transaction(async (trx) => {
        await insertSites(trx, [fullSite(1, 'Committed Anyway')]);
        await inline.mark(trx, 'dcim.site', 1);
        return 'committed';
      });

      expect(result).toBe('committed');
    } finally {
      await sql`DROP TABLE search_cache`.execute(database.db);
      await sql`ALTER TABLE search_cache_away RENAME TO search_cache`.execute(database.db);
    }
    const site = await sql<{ name: string }>`SELECT name FROM site WHERE id = 1`.execute(database.db);
    expect(site.rows[0]?.name).toBe('Committed Anyway');
    expect(await countOutbox(database.db, 'pending')).toBe(1);
    await outbox.drain();
    expect(await outbox.search({ query: 'Committed Anyway' })).toHaveLength(1);
  });

  test('never raises after the commit when the dispatcher throws', async () => {
    const failures: LogLine[] = [];
    const inline = createSearchOutbox({
      db: database.db,
      indexes: FIXTURE_INDEXES,
      logger: capturingLogger(failures),
      dispatcher: {
        dispatch: async () => {
          throw 'queue unreachable';
        },
      },
    });
    const result = await inline.transaction(async (trx) => {
      await inline.mark(trx, 'dcim.site', 1);
      return 42;
    });

    expect(result).toBe(42);
    expect(inline.stats.dispatchFailures).toBe(1);
    expect(failures.some((line) => line.level === 'error' && line.attributes?.error === 'queue unreachable')).toBe(true);
  });

  test('raises when the commit itself fails', async () => {
    await sql`
      CREATE TABLE deferred_check (id int PRIMARY KEY, site_id bigint REFERENCES site (id) DEFERRABLE INITIALLY DEFERRED)
    `.execute(database.db);
    const inline = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES });
    const attempt = inline.transaction(async (trx) => {
      await sql`INSERT INTO deferred_check VALUES (1, 999)`.execute(trx);
      await inline.mark(trx, 'dcim.site', 999);
    });

    await expect(attempt).rejects.toThrow(/foreign key/);
    expect(await countOutbox(database.db)).toBe(0);
    expect(inline.stats.dispatched).toBe(0);
    await sql`DROP TABLE deferred_check`.execute(database.db);
  });
});
