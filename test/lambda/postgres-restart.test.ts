import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import {
  createDrainerHandlers,
  createLambdaContext,
  createScheduledEvent,
  ForwardingLogger,
  ForwardingMetrics,
  runSchedule,
  type DrainerHandlers,
  type SweepResult,
} from '@search-outbox/lambda';
import { startLocalPostgres, type LocalPostgres } from '@search-outbox/local-postgres';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { openTolerantPool } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';

/**
 * Restarts PostgreSQL while writers commit and the scheduled sweep runs in a
 * loop, as EventBridge would invoke it. The test starts its own embedded
 * server, even when DATABASE_URL names one, because it must restart it.
 */

const SITES = 40;

let server: LocalPostgres;
let databaseUrl: string;
let admin: Kysely<any>;
let writerDb: Kysely<any>;
let handlers: DrainerHandlers;
const logLines: LogLine[] = [];

/** Opens a pool that survives the restart, which ends every connection. */
function errorTolerantPool(max: number): pg.Pool {
  return openTolerantPool(databaseUrl, { max, connectionTimeoutMillis: 2_000 });
}

beforeAll(async () => {
  server = await startLocalPostgres({ databaseUrl: null });
  databaseUrl = await server.createDatabase('restart_under_drain');
  admin = new Kysely<any>({ dialect: new PostgresDialect({ pool: errorTolerantPool(2) }) });
  writerDb = new Kysely<any>({ dialect: new PostgresDialect({ pool: errorTolerantPool(4) }) });
  const setup = createSearchOutbox({ db: admin, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await setup.migrate();
  await createFixtureTables(admin);
  const ids = Array.from({ length: SITES }, (_, index) => index + 1);
  await insertSites(admin, ids.map((id) => fullSite(id, `Site ${id}`)));
  await setup.mark(admin, 'dcim.site', ids);
  await setup.drain();

  handlers = createDrainerHandlers({
    indexes: FIXTURE_INDEXES,
    // The handlers build their own pool from the settings, as in Lambda.
    environment: { DATABASE_URL: databaseUrl, DB_SSL: 'disable', SEARCH_OUTBOX_BATCH_SIZE: '10' },
    logger: new ForwardingLogger(capturingLogger(logLines), { logLevel: 'INFO' }),
    metrics: new ForwardingMetrics({ onPublish: () => {} }),
  });
}, 120_000);

afterAll(async () => {
  await handlers?.database.close();
  await writerDb?.destroy();
  await admin?.destroy();
  await server?.stop();
});

/** Commits renames until `stop` is set, retrying a transaction that failed because the server went away. */
async function runWriter(writer: SearchOutbox, stop: () => boolean, counts: { commits: number; failures: number }): Promise<void> {
  let round = 0;
  while (!stop()) {
    round += 1;
    const id = (round % SITES) + 1;
    try {
      await writer.transaction(async (trx) => {
        await trx.updateTable('site').set({ description: `Round ${round}` }).where('id', '=', id).execute();
        await writer.mark(trx, 'dcim.site', id);
      });
      counts.commits += 1;
    } catch {
      // A transaction that failed during the restart may or may not have
      // committed; the comparison with the source tables covers both.
      counts.failures += 1;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

async function waitFor(condition: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    try {
      if (await condition()) return true;
    } catch {
      // The server may still be starting.
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}

test('drain loop survives a PostgreSQL restart', async () => {
  const writer = createSearchOutbox({ db: writerDb, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  const loop = new AbortController();
  const sweeps: SweepResult[] = [];
  const schedule = runSchedule({
    handler: handlers.schedule,
    intervalMs: 20,
    signal: loop.signal,
    functionTimeoutMs: 10_000,
    logger: capturingLogger(logLines),
    onResult: (result) => sweeps.push(result),
  });

  let writing = true;
  const before = { commits: 0, failures: 0 };
  const writers = runWriter(writer, () => !writing, before);
  expect(await waitFor(async () => before.commits >= 20 && sweeps.some((sweep) => sweep.drain.claimed > 0), 30_000)).toBe(true);

  await server.restart();
  const sweepsBeforeRestart = sweeps.length;
  // The writer keeps committing after the restart; wait for the running
  // loop, not a new caller, to drain what was committed since.
  const commitsAtRestart = before.commits;
  expect(await waitFor(async () => before.commits >= commitsAtRestart + 20, 30_000)).toBe(true);
  writing = false;
  await writers;
  expect(await waitFor(async () => (await countOutbox(admin)) === 0, 30_000)).toBe(true);
  loop.abort();
  await schedule;

  expect(sweeps.length).toBeGreaterThan(sweepsBeforeRestart);
  const cache = await readSortedCache(admin);
  expect(cache).toEqual(await expectedCacheLines(admin, { objectTypes: ['dcim.site'] }));
  expect(new Set(cache).size).toBe(cache.length);

  // Every failure during the restart left a line that describes what happened:
  // a dropped connection, a retry, or a failed invocation of the sweep.
  const faultLines = logLines.filter((line) => line.level === 'warn' || line.level === 'error');
  expect(faultLines.length).toBeGreaterThan(0);
  for (const line of faultLines) {
    expect(line.message).toMatch(/database connection|dead database connection|scheduled handler failed|failed/);
  }

  // One more sweep after the loop stopped finds nothing left.
  const last = await handlers.schedule(createScheduledEvent(), createLambdaContext({ functionName: 'sweep', timeoutMs: 10_000 }));
  expect(last.drain.claimed).toBe(0);
  expect(last.status).toMatchObject({ pending: 0, failed: 0, dead: 0 });
  expect(await sql<{ ok: number }>`SELECT 1 AS ok`.execute(admin)).toMatchObject({ rows: [{ ok: 1 }] });
}, 120_000);

test('restart rejects a server it did not start', async () => {
  // Wrapping a DATABASE_URL server opens no connection, so this port is never reached.
  const external = await startLocalPostgres({ databaseUrl: 'postgres://someone@127.0.0.1:1/app' });

  expect(external.embedded).toBe(false);
  await expect(external.restart()).rejects.toThrow(/Cannot restart the server named by DATABASE_URL/);
});
