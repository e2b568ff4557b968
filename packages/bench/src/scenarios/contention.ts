import type { Kysely } from 'kysely';
import pg from 'pg';
import {
  CONSUMER_APPLICATION,
  delay,
  installUpkeep,
  openPool,
  startConsumer,
  withApplicationName,
  WRITER_APPLICATION,
  type InstalledUpkeep,
  type Upkeep,
  type UpkeepKey,
} from '../alternatives/upkeep.js';
import { createSiteTable, idRange, insertSites, replaceSiteCacheRows, updateSiteDescription } from '../alternatives/site-schema.js';
import type { BenchContext, SizeClass } from '../context.js';
import type { Figure, ScenarioResult, TargetCheck } from '../results.js';
import type { Scenario } from '../scenario.js';
import { summarize } from '../stats.js';

interface ContentionSizes {
  /** Concurrent writers, each on its own connection of a pool of this size. */
  readonly writers: number;
  /** Sites that all writers update. */
  readonly objects: number;
  /** Length of one measurement, in milliseconds. */
  readonly durationMs: number;
  /** Upper bound of each writer's transactions per measurement. */
  readonly maxTransactionsPerWriter: number;
}

const SIZES: Record<SizeClass, ContentionSizes> = {
  smoke: { writers: 4, objects: 20, durationMs: 1000, maxTransactionsPerWriter: 500 },
  default: { writers: 32, objects: 100, durationMs: 10_000, maxTransactionsPerWriter: 20_000 },
  full: { writers: 32, objects: 100, durationMs: 30_000, maxTransactionsPerWriter: 60_000 },
};

/** The variants measured: (a) is the baseline of the application's own row locks. */
const MEASURED: readonly UpkeepKey[] = ['none', 'search-outbox', 'graphile-worker', 'pg-boss', 'notify'];

/** Interval of the lock sampler, in milliseconds. */
const SAMPLE_INTERVAL_MS = 20;

/** search-outbox drainers, and graphile-worker or pg-boss workers, running during a measurement. */
const CONSUMER_SETTINGS = { drainers: 2, workerConcurrency: 4 } as const;

/** Lock waits seen by the sampler, in backend-samples: one waiting backend in one sample. */
interface LockWaitCounts {
  samples: number;
  /** Every waiting backend, relation-extension locks included. */
  raw: number;
  /** Every waiting backend except those waiting for a relation-extension lock. */
  excludingExtension: number;
  /** Writers waiting for another writer in the search upkeep statement or at COMMIT. */
  writerOnWriterUpkeep: number;
  /** Writers waiting for another writer in the application's UPDATE (a row lock). */
  writerOnWriterUpdate: number;
  /** Writers waiting for another writer in a statement that is neither (the sampler's two views disagreed). */
  writerOnWriterOther: number;
  /** Up to five of those statements, for the notes. */
  otherStatements: string[];
  /** Writers waiting for a drainer, worker or consumer. */
  writerOnConsumer: number;
  /** Drainers, workers or consumers waiting for anything. */
  consumerWaits: number;
}

interface Measurement {
  readonly throughput: number;
  readonly committed: number;
  readonly failed: number;
  /** Message of the first failed transaction, if any failed. */
  readonly firstError: string | undefined;
  readonly processed: number;
  readonly waits: LockWaitCounts;
}

/**
 * Writer contention: many writers on their own connections update the same
 * objects, each transaction one object chosen at random plus its search
 * upkeep, while the variant's drainers or workers run. A sampler reads
 * pg_locks and pg_stat_activity every 20 ms and classifies each waiting
 * backend by who waits, in which statement, and on whom.
 */
export const contentionScenario: Scenario = {
  id: 'contention',
  title: 'Writer contention',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const sizes = SIZES[context.size];
    const database = await context.createDatabase('contention');
    try {
      await createSiteTable(database.db);
      const installed = await installUpkeep(database.url, database.db);
      try {
        const upkeeps = MEASURED.map((key) => {
          const upkeep = installed.upkeeps.find((candidate) => candidate.key === key);
          if (upkeep === undefined) throw new Error(`Upkeep variant "${key}" not found`);
          return upkeep;
        });
        const measurements = new Map<UpkeepKey, Measurement[]>(upkeeps.map((upkeep) => [upkeep.key, []]));
        for (let run = 0; run < context.runs; run += 1) {
          for (const upkeep of upkeeps) {
            const measurement = await measure(database.url, database.db, installed, upkeep, sizes);
            measurements.get(upkeep.key)?.push(measurement);
            context.log(
              `contention run ${run + 1}/${context.runs} (${upkeep.letter}) ${upkeep.label}: ` +
                `${measurement.throughput.toFixed(0)} transactions/s, lock waits ${measurement.waits.excludingExtension} ` +
                `(upkeep ${measurement.waits.writerOnWriterUpkeep}, update ${measurement.waits.writerOnWriterUpdate}), ` +
                `failed ${measurement.failed}`,
            );
          }
        }
        return buildResult(upkeeps, measurements, sizes);
      } finally {
        await installed.close();
      }
    } finally {
      await database.destroy();
    }
  },
};

async function measure(
  url: string,
  db: Kysely<any>,
  installed: InstalledUpkeep,
  upkeep: Upkeep,
  sizes: ContentionSizes,
): Promise<Measurement> {
  await installed.reset(db);
  const ids = idRange(1, sizes.objects);
  await insertSites(db, ids);
  await replaceSiteCacheRows(db, ids);

  const consumer = await startConsumer(upkeep.key, url, installed, CONSUMER_SETTINGS);
  const writers = openPool(url, WRITER_APPLICATION, sizes.writers);
  const sampler = startLockSampler(url);
  let committed = 0;
  let failed = 0;
  let firstError: string | undefined;
  let elapsedMs = 0;
  let waits = emptyCounts();
  try {
    const started = performance.now();
    const deadline = started + sizes.durationMs;
    const writer = async (writerNumber: number): Promise<void> => {
      for (let count = 0; count < sizes.maxTransactionsPerWriter && performance.now() < deadline; count += 1) {
        const id = 1 + Math.floor(Math.random() * sizes.objects);
        try {
          await writers.transaction().execute(async (trx) => {
            await updateSiteDescription(trx, id, `Writer ${writerNumber} change ${count}`);
            await upkeep.apply(trx, [id]);
          });
          committed += 1;
        } catch (error) {
          // A deadlock or serialization failure rolls the transaction back. It is counted, not retried.
          failed += 1;
          firstError ??= error instanceof Error ? error.message : String(error);
        }
      }
    };
    await Promise.all(Array.from({ length: sizes.writers }, (_, writerNumber) => writer(writerNumber)));
    elapsedMs = performance.now() - started;
  } finally {
    waits = await sampler.stop();
    await writers.destroy();
    await consumer.stop();
  }
  return {
    throughput: committed / (elapsedMs / 1000),
    committed,
    failed,
    firstError,
    processed: consumer.processed(),
    waits,
  };
}

function emptyCounts(): LockWaitCounts {
  return {
    samples: 0,
    raw: 0,
    excludingExtension: 0,
    writerOnWriterUpkeep: 0,
    writerOnWriterUpdate: 0,
    writerOnWriterOther: 0,
    otherStatements: [],
    writerOnConsumer: 0,
    consumerWaits: 0,
  };
}

interface WaitingBackend {
  application_name: string;
  query: string;
  wait_event_type: string | null;
  wait_event: string | null;
  locktype: string | null;
  blockers: string[] | null;
}

/**
 * Samples lock waits every `SAMPLE_INTERVAL_MS` on a connection of its own
 * until `stop`. A backend counts as waiting when pg_locks has a lock it was
 * not granted or pg_stat_activity reports wait_event_type 'Lock'.
 */
function startLockSampler(url: string): { stop(): Promise<LockWaitCounts> } {
  const counts = emptyCounts();
  const client = new pg.Client({ connectionString: withApplicationName(url, 'bench-lock-sampler') });
  client.on('error', () => {});
  let stopped = false;
  const loop = (async () => {
    await client.connect();
    while (!stopped) {
      const result = await client.query<WaitingBackend>(`
        SELECT w.application_name, w.query, w.wait_event_type, w.wait_event, l.locktype,
               ARRAY(SELECT b.application_name FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(w.pid))) AS blockers
        FROM pg_stat_activity w
        LEFT JOIN LATERAL (SELECT locktype FROM pg_locks WHERE pid = w.pid AND NOT granted LIMIT 1) l ON TRUE
        WHERE w.datname = current_database() AND w.pid <> pg_backend_pid()
          AND (w.wait_event_type = 'Lock' OR l.locktype IS NOT NULL)
      `);
      counts.samples += 1;
      for (const backend of result.rows) classify(backend, counts);
      await delay(SAMPLE_INTERVAL_MS);
    }
  })();
  return {
    async stop() {
      stopped = true;
      try {
        await loop;
      } finally {
        await client.end();
      }
      return counts;
    },
  };
}

function classify(backend: WaitingBackend, counts: LockWaitCounts): void {
  counts.raw += 1;
  if (backend.locktype === 'extend' || backend.wait_event === 'extend') return;
  counts.excludingExtension += 1;

  if (backend.application_name !== WRITER_APPLICATION) {
    counts.consumerWaits += 1;
    return;
  }
  const blockers = backend.blockers ?? [];
  if (blockers.some((name) => name === CONSUMER_APPLICATION)) counts.writerOnConsumer += 1;
  if (!blockers.some((name) => name === WRITER_APPLICATION)) return;
  const statement = backend.query.trim().toLowerCase();
  // Only a row of pg_stat_activity whose own wait_event_type is 'Lock' ties
  // the wait to the statement text beside it. A wait seen only in pg_locks
  // may belong to the next statement, so it is kept apart.
  if (backend.wait_event_type !== 'Lock') {
    counts.writerOnWriterOther += 1;
    if (counts.otherStatements.length < 5) counts.otherStatements.push(backend.query.trim().slice(0, 80));
    return;
  }
  if (statement.startsWith('update site')) {
    counts.writerOnWriterUpdate += 1;
  } else if (statement === 'commit' || UPKEEP_STATEMENT.test(statement)) {
    counts.writerOnWriterUpkeep += 1;
  } else {
    // pg_stat_activity and pg_locks are not read at one instant, so the
    // statement may already be the next one; such samples are kept apart.
    counts.writerOnWriterOther += 1;
    if (counts.otherStatements.length < 5) counts.otherStatements.push(backend.query.trim().slice(0, 80));
  }
}

/** Statements of the upkeep variants: the outbox mark, add_job, pg-boss's job INSERT and pg_notify. */
const UPKEEP_STATEMENT = /search_outbox|graphile_worker|pgboss|pg_notify/;

function buildResult(
  upkeeps: readonly Upkeep[],
  measurements: ReadonlyMap<UpkeepKey, readonly Measurement[]>,
  sizes: ContentionSizes,
): ScenarioResult {
  const figures: Figure[] = [];
  const of = (upkeep: Upkeep): readonly Measurement[] => measurements.get(upkeep.key) ?? [];
  const name = (upkeep: Upkeep): string => `(${upkeep.letter}) ${upkeep.label}`;
  for (const upkeep of upkeeps) {
    const runs = of(upkeep);
    const add = (label: string, unit: string, value: (measurement: Measurement) => number): void => {
      figures.push({ label: `${label} ${name(upkeep)}`, unit, summary: summarize(runs.map(value)) });
    };
    add('throughput', 'transactions/s', (m) => m.throughput);
    add('lock waits, raw', 'backend-samples', (m) => m.waits.raw);
    add('lock waits, relation extension excluded', 'backend-samples', (m) => m.waits.excludingExtension);
    add('writer-on-writer waits in upkeep or COMMIT', 'backend-samples', (m) => m.waits.writerOnWriterUpkeep);
    add('writer-on-writer waits in the UPDATE', 'backend-samples', (m) => m.waits.writerOnWriterUpdate);
    add('writer-on-writer waits in another statement', 'backend-samples', (m) => m.waits.writerOnWriterOther);
    add('writer waits on a drainer or worker', 'backend-samples', (m) => m.waits.writerOnConsumer);
    add('drainer or worker waits', 'backend-samples', (m) => m.waits.consumerWaits);
    add('failed transactions', 'transactions', (m) => m.failed);
  }

  const outbox = upkeeps.find((upkeep) => upkeep.key === 'search-outbox');
  const targets: TargetCheck[] = [];
  if (outbox !== undefined) {
    const upkeepWaits = Math.max(...of(outbox).map((m) => m.waits.writerOnWriterUpkeep));
    const consumerWaits = Math.max(...of(outbox).map((m) => m.waits.writerOnConsumer));
    targets.push({
      target: '(c) no lock waits between writers caused by search upkeep',
      measured: `${upkeepWaits} backend-samples (max over runs) of writers waiting for writers in the mark or at COMMIT; ${consumerWaits} waiting for a drainer`,
      met: upkeepWaits === 0 && consumerWaits === 0,
      ...(upkeepWaits === 0 && consumerWaits === 0
        ? {}
        : { reason: 'The sampler saw writers wait in the mark statement, at COMMIT or on a drainer; see the per-run figures.' }),
    });
  }

  const runNotes: string[] = upkeeps.flatMap((upkeep) =>
    of(upkeep)
      .filter((m) => m.firstError !== undefined)
      .map((m) => `(${upkeep.letter}) first failed transaction: ${m.firstError}`),
  );
  for (const upkeep of upkeeps) {
    const statements = [...new Set(of(upkeep).flatMap((m) => m.waits.otherStatements))];
    if (statements.length > 0) {
      runNotes.push(`(${upkeep.letter}) writer waits classified as another statement were seen in: ${statements.join(' | ')}`);
    }
  }
  const samples = upkeeps.flatMap((upkeep) => of(upkeep).map((m) => m.waits.samples));
  return {
    id: 'contention',
    title: 'Writer contention',
    parameters: {
      writers: sizes.writers,
      objects: sizes.objects,
      durationMs: sizes.durationMs,
      maxTransactionsPerWriter: sizes.maxTransactionsPerWriter,
      sampleIntervalMs: SAMPLE_INTERVAL_MS,
      drainers: CONSUMER_SETTINGS.drainers,
      workerConcurrency: CONSUMER_SETTINGS.workerConcurrency,
    },
    figures,
    ratios: [],
    targets,
    notes: [
      `${sizes.writers} writers, each on its own connection, run transactions for ${sizes.durationMs / 1000} s; each transaction updates one of ${sizes.objects} sites chosen at random and does the variant's upkeep for it.`,
      `During the measurement, (c) runs ${CONSUMER_SETTINGS.drainers} search-outbox drain loops, (d) a graphile-worker runner with concurrency ${CONSUMER_SETTINGS.workerConcurrency}, and (e) ${CONSUMER_SETTINGS.workerConcurrency} pg-boss workers (batches of up to 100 jobs, 0.5 s polling); their tasks rebuild the objects' cache rows. (a) and (f) have no consumer.`,
      `Lock waits are backend-samples: every ${SAMPLE_INTERVAL_MS} ms (${Math.min(...samples)} to ${Math.max(...samples)} samples per measurement) each backend with an ungranted pg_locks entry or wait_event_type 'Lock' counts once. Multiply by the sampling interval for an estimate of the time spent waiting.`,
      'A waiting writer is classified by its statement (the application UPDATE, or the upkeep statement or COMMIT) and by its blockers from pg_blocking_pids (writers, or drainers and workers).',
      ...runNotes,
      'Every variant\'s UPDATEs wait on each other, because writers update the same rows: a row lock on the site serializes two transactions on one object before either reaches its upkeep statement. So a job key or singleton key shared by two writers cannot make them wait here; the upkeep waits that remain come from COMMIT (the NOTIFY queue lock, taken by (f) and by graphile-worker\'s add_job) and from the job rows that workers lock.',
    ],
  };
}
