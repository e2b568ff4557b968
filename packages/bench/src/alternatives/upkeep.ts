import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { Logger as WorkerLogger, run as runGraphileWorker, runMigrations, type Runner } from 'graphile-worker';
import { CompiledQuery, Kysely, PostgresDialect, sql, type RawBuilder } from 'kysely';
import pg from 'pg';
import PgBoss from 'pg-boss';
import { replaceSiteCacheRows, SITE_INDEXES, SITE_OBJECT_TYPE } from './site-schema.js';

/** The ways of keeping the search cache that the write-path and contention scenarios compare. */
export type UpkeepKey = 'none' | 'sync-rebuild' | 'search-outbox' | 'graphile-worker' | 'pg-boss' | 'notify';

export interface Upkeep {
  readonly key: UpkeepKey;
  /** The letter of the benchmark's list: (a) none to (f) NOTIFY. */
  readonly letter: string;
  readonly label: string;
  /** Does this variant's search upkeep for `ids`, inside the application's transaction `trx`. */
  apply(trx: Kysely<any>, ids: readonly number[]): Promise<void>;
  /** Counts what the upkeep left behind (outbox rows, jobs, cache rows), or null for the variants that leave nothing. */
  countWork(db: Kysely<any>): Promise<number | null>;
}

/** Task identifier of the graphile-worker jobs and name of the pg-boss queue. */
export const JOB_NAME = 'rebuild_search';
/** Channel of the NOTIFY variant. */
export const NOTIFY_CHANNEL = 'search_changed';
/** application_name of the connections that the lock sampler counts as writers. */
export const WRITER_APPLICATION = 'bench-writer';
/** application_name of the drainers', workers' and consumers' connections. */
export const CONSUMER_APPLICATION = 'bench-consumer';

const silentWorkerLogger = new WorkerLogger(() => () => {});

/** Returns `url` with `application_name` set, so that pg_stat_activity distinguishes the connections. */
export function withApplicationName(url: string, applicationName: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set('application_name', applicationName);
  return parsed.toString();
}

/** Opens a Kysely pool on `url` whose connections carry `applicationName`; the caller destroys it. */
export function openPool(url: string, applicationName: string, max: number): Kysely<any> {
  const pool = new pg.Pool({ connectionString: withApplicationName(url, applicationName), max });
  pool.on('error', () => {});
  return new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
}

/**
 * The installed alternatives of one database: the search-outbox schema, the
 * graphile-worker schema (installed by its own `runMigrations`) and a started
 * pg-boss with its queue. `close` stops pg-boss.
 */
export interface InstalledUpkeep {
  readonly upkeeps: readonly Upkeep[];
  readonly outbox: SearchOutbox;
  readonly boss: PgBoss;
  /** Empties the outbox, the job tables and the cache, between measurements. */
  reset(db: Kysely<any>): Promise<void>;
  close(): Promise<void>;
}

/**
 * Installs every alternative into the database at `url`, which must already
 * contain the `site` table. pg-boss runs without its supervisor and
 * scheduler, so that no maintenance query runs during a measurement.
 */
export async function installUpkeep(url: string, db: Kysely<any>): Promise<InstalledUpkeep> {
  const outbox = createSearchOutbox({ db, indexes: SITE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();

  await runMigrations({ connectionString: url, logger: silentWorkerLogger });

  const boss = new PgBoss({
    connectionString: withApplicationName(url, CONSUMER_APPLICATION),
    max: 4,
    supervise: false,
    schedule: false,
  });
  boss.on('error', () => {});
  await boss.start();
  // Policy `short` allows one queued (state `created`) job per singleton key:
  // a send with the key of a job still waiting is dropped, the coalescing that
  // the benchmark compares. A job that a worker is running does not block a new one.
  await boss.createQueue(JOB_NAME, { name: JOB_NAME, policy: 'short' });

  const upkeeps: Upkeep[] = [
    { key: 'none', letter: 'a', label: 'no search upkeep', countWork: async () => null, apply: async () => {} },
    {
      key: 'sync-rebuild',
      letter: 'b',
      label: 'cache rebuilt in the transaction',
      countWork: (db) => countRows(db, sql`search_cache`),
      apply: (trx, ids) => replaceSiteCacheRows(trx, ids),
    },
    {
      key: 'search-outbox',
      letter: 'c',
      label: 'search-outbox mark',
      countWork: (db) => countRows(db, sql`search_outbox.outbox`),
      apply: async (trx, ids) => {
        await outbox.mark(trx, SITE_OBJECT_TYPE, ids);
      },
    },
    {
      key: 'graphile-worker',
      letter: 'd',
      label: 'graphile-worker add_job with a job key',
      countWork: (db) => countRows(db, sql`graphile_worker._private_jobs`),
      // One statement for any number of ids: add_job once per id, each with
      // the object's job key, so a waiting job of the same object is replaced.
      apply: async (trx, ids) => {
        await sql`
          SELECT graphile_worker.add_job(
            ${JOB_NAME}, json_build_object('id', id), job_key := ${`${SITE_OBJECT_TYPE}:`} || id::text)
          FROM unnest(${ids}::bigint[]) AS id
        `.execute(trx);
      },
    },
    {
      key: 'pg-boss',
      letter: 'e',
      label: 'pg-boss send with a singleton key',
      countWork: (db) => countRows(db, sql`pgboss.job`),
      // The `db` option makes pg-boss run its INSERT through the
      // application's transaction. Several ids go through `insert`, pg-boss's
      // one-statement bulk send, with a singleton key per job.
      apply: async (trx, ids) => {
        const db = transactionAdapter(trx);
        if (ids.length === 1) {
          const id = ids[0] as number;
          await boss.send(JOB_NAME, { id }, { singletonKey: `${SITE_OBJECT_TYPE}:${id}`, db });
          return;
        }
        await boss.insert(
          ids.map((id) => ({ name: JOB_NAME, data: { id }, singletonKey: `${SITE_OBJECT_TYPE}:${id}` })),
          { db },
        );
      },
    },
    {
      key: 'notify',
      letter: 'f',
      label: 'NOTIFY per transaction',
      countWork: async () => null,
      // A payload may not exceed 8000 bytes, so it carries the count, not the ids.
      apply: async (trx, ids) => {
        const payload = JSON.stringify({ objectType: SITE_OBJECT_TYPE, objects: ids.length });
        await sql`SELECT pg_notify(${NOTIFY_CHANNEL}, ${payload})`.execute(trx);
      },
    },
  ];

  return {
    upkeeps,
    outbox,
    boss,
    async reset(target) {
      await sql`
        TRUNCATE site, search_cache, search_outbox.outbox, graphile_worker._private_jobs, pgboss.job
      `.execute(target);
    },
    async close() {
      await boss.stop({ graceful: false, close: true, wait: true });
    },
  };
}

async function countRows(db: Kysely<any>, tableName: RawBuilder<unknown>): Promise<number> {
  const result = await sql<{ count: string }>`SELECT count(*) AS count FROM ${tableName}`.execute(db);
  return Number(result.rows[0]?.count ?? 0);
}

/** Creates a pg-boss `db` that runs pg-boss's SQL on the application's Kysely transaction. */
function transactionAdapter(trx: Kysely<any>): PgBoss.Db {
  return {
    async executeSql(text, values) {
      const result = await trx.executeQuery(CompiledQuery.raw(text, values));
      return { rows: result.rows as any[] };
    },
  };
}

/** A running consumer of one variant's work; `stop` ends it and waits for it. */
export interface Consumer {
  stop(): Promise<void>;
  /** Objects whose cache rows the consumer rebuilt (for the outbox: drained objects). */
  processed(): number;
}

/**
 * Starts the process that works off a variant's queue while writers run:
 * search-outbox drainers, a graphile-worker runner, pg-boss workers, or
 * nothing for the variants without a queue.
 */
export async function startConsumer(
  key: UpkeepKey,
  url: string,
  installed: InstalledUpkeep,
  settings: { readonly drainers: number; readonly workerConcurrency: number },
): Promise<Consumer> {
  if (key === 'search-outbox') return startOutboxDrainers(url, settings.drainers);
  if (key === 'graphile-worker') return startGraphileWorker(url, settings.workerConcurrency);
  if (key === 'pg-boss') return startPgBossWorker(url, installed.boss, settings.workerConcurrency);
  return { stop: async () => {}, processed: () => 0 };
}

/** Idle wait of a drainer that found nothing to claim, in milliseconds. */
const IDLE_DRAIN_WAIT_MS = 20;

async function startOutboxDrainers(url: string, count: number): Promise<Consumer> {
  const db = openPool(url, CONSUMER_APPLICATION, count);
  const outbox = createSearchOutbox({ db, indexes: SITE_INDEXES, dispatcher: 'none' });
  let stopped = false;
  let processed = 0;
  const loop = async (): Promise<void> => {
    while (!stopped) {
      const summary = await outbox.drain();
      processed += summary.rebuilt + summary.removed;
      if (summary.claimed === 0) await delay(IDLE_DRAIN_WAIT_MS);
    }
  };
  const loops = Array.from({ length: count }, () => loop());
  return {
    processed: () => processed,
    async stop() {
      stopped = true;
      try {
        await Promise.all(loops);
      } finally {
        await db.destroy();
      }
    },
  };
}

async function startGraphileWorker(url: string, concurrency: number): Promise<Consumer> {
  const db = openPool(url, CONSUMER_APPLICATION, concurrency);
  let processed = 0;
  const runner: Runner = await runGraphileWorker({
    connectionString: withApplicationName(url, CONSUMER_APPLICATION),
    concurrency,
    maxPoolSize: concurrency + 2,
    noHandleSignals: true,
    pollInterval: 100,
    logger: silentWorkerLogger,
    taskList: {
      [JOB_NAME]: async (payload) => {
        await replaceSiteCacheRows(db, [Number((payload as { id: number }).id)]);
        processed += 1;
      },
    },
  });
  return {
    processed: () => processed,
    async stop() {
      try {
        await runner.stop();
      } finally {
        await db.destroy();
      }
    },
  };
}

async function startPgBossWorker(url: string, boss: PgBoss, concurrency: number): Promise<Consumer> {
  const db = openPool(url, CONSUMER_APPLICATION, concurrency);
  let processed = 0;
  let running = 0;
  const handler = async (jobs: PgBoss.Job<{ id: number }>[]): Promise<void> => {
    running += 1;
    try {
      await replaceSiteCacheRows(
        db,
        jobs.map((job) => job.data.id),
      );
      processed += jobs.length;
    } finally {
      running -= 1;
    }
  };
  // pg-boss 10 polls at most every 0.5 s; each poll fetches a batch of up to 100 jobs.
  for (let worker = 0; worker < concurrency; worker += 1) {
    await boss.work(JOB_NAME, { batchSize: 100, pollingIntervalSeconds: 0.5 }, handler);
  }
  return {
    processed: () => processed,
    async stop() {
      try {
        // offWork returns before the running handlers finish, so wait for them (at most 10 s).
        await boss.offWork(JOB_NAME);
        for (let waited = 0; running > 0 && waited < 10_000; waited += 20) await delay(20);
      } finally {
        await db.destroy();
      }
    },
  };
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
