import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import type { BenchContext } from '../context.js';
import { countCacheRows, countLimitRows, insertAtLimit, truncateCache } from '../limit.js';
import { medianOf, type Figure, type Ratio, type ScenarioResult, type TargetCheck } from '../results.js';
import { markSelection, pickObjects, prepareScaledData, selectionSize, truncateOutbox } from '../scale.js';
import type { Scenario } from '../scenario.js';
import { summarize, time } from '../stats.js';

const BACKLOGS = { smoke: [100, 500], default: [1_000, 10_000, 100_000], full: [1_000, 10_000, 100_000] } as const;
const DRAINER_COUNTS = [1, 2, 4] as const;
/** Share of the limit's throughput that the drain should reach at the largest backlog. */
const TARGET_SHARE_OF_LIMIT = 0.5;
const TARGET_BACKLOG = 100_000;

/**
 * Drain throughput. A backlog of marked objects whose cache rows are all
 * missing, as after a bulk import, is drained by 1, 2 and 4 drainers at
 * once, each with its own pool. One `INSERT … SELECT` that writes the same
 * rows is the baseline.
 */
export const drainThroughputScenario: Scenario = {
  id: 'drain-throughput',
  title: 'Drain throughput against the INSERT … SELECT limit',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const backlogs = BACKLOGS[context.size];
    const largest = Math.max(...backlogs);
    const { data, counts } = await prepareScaledData(context, 'drain_throughput', { objects: largest }, { fillCache: false });
    try {
      const db = data.database.db;
      const drainers: SearchOutbox[] = DRAINER_COUNTS.map(() =>
        createSearchOutbox({ db: data.database.connect(2), indexes: data.registry, dispatcher: 'none' }),
      );
      const figures: Figure[] = [];
      const ratios: Ratio[] = [];
      const targets: TargetCheck[] = [];

      for (const backlog of backlogs) {
        const selection = await pickObjects(db, data.registry, backlog);
        const objects = selectionSize(selection);
        const expectedRows = await countLimitRows(db, data.registry, 'public', selection);
        const limitSamples: number[] = [];
        const drainSamples = new Map<number, number[]>(DRAINER_COUNTS.map((count) => [count, []]));

        for (let run = 0; run < context.runs; run += 1) {
          await truncateCache(db);
          const limit = await insertAtLimit(db, data.registry, 'public', selection);
          if (limit.rows !== expectedRows) throw new Error(`The limit wrote ${limit.rows} rows; expected ${expectedRows}`);
          limitSamples.push(limit.durationMs);

          for (const count of DRAINER_COUNTS) {
            await truncateCache(db);
            await truncateOutbox(db);
            await markSelection(data.outbox, selection);
            let drained = 0;
            const durationMs = await time(async () => {
              const summaries = await Promise.all(drainers.slice(0, count).map((drainer) => drainer.drain()));
              drained = summaries.reduce((total, summary) => total + summary.objects, 0);
            });
            const rows = await countCacheRows(db);
            if (drained !== objects || rows !== expectedRows) {
              throw new Error(
                `${count} drainers drained ${drained} of ${objects} objects and left ${rows} cache rows; expected ${expectedRows}`,
              );
            }
            drainSamples.get(count)?.push(durationMs);
            context.log(`drain-throughput: backlog ${backlog}, ${count} drainers, run ${run + 1}: ${durationMs.toFixed(0)} ms`);
          }
        }

        const limitLabel = `limit, ${backlog} objects`;
        figures.push(...throughputFigures(limitLabel, limitSamples, objects, expectedRows));
        for (const count of DRAINER_COUNTS) {
          const label = `drain, ${backlog} objects, ${count} drainer${count === 1 ? '' : 's'}`;
          figures.push(...throughputFigures(label, drainSamples.get(count) ?? [], objects, expectedRows));
          const ratio: Ratio = {
            label: `${label} / limit (objects/s)`,
            figure: `${label}: objects/s`,
            baseline: `${limitLabel}: objects/s`,
            value: medianOf(figures, `${label}: objects/s`) / medianOf(figures, `${limitLabel}: objects/s`),
          };
          ratios.push(ratio);
          if (backlog === largest) {
            const met = ratio.value >= TARGET_SHARE_OF_LIMIT && backlog >= TARGET_BACKLOG;
            const plural = count === 1 ? '' : 's';
            targets.push({
              target: `drain throughput ≥ ${TARGET_SHARE_OF_LIMIT} × limit at a ${TARGET_BACKLOG}-object backlog, ${count} drainer${plural}`,
              measured: `${ratio.value.toFixed(2)} × limit at a ${backlog}-object backlog`,
              met,
              ...(met ? {} : { reason: backlog < TARGET_BACKLOG ? smallRunReason(backlog) : missReason(count) }),
            });
          }
        }
      }

      return {
        id: this.id,
        title: this.title,
        parameters: {
          backlogs: backlogs.join(', '),
          drainers: DRAINER_COUNTS.join(', '),
          'batch size': 'default (500)',
          'data objects': counts.objects,
          'data cache rows': counts.cacheRows,
        },
        figures,
        ratios,
        targets,
        notes: [
          'Each measurement starts with the backlog objects missing from the cache, as after a bulk import; the limit writes the same rows with one INSERT … SELECT into the same indexed cache table.',
          'The backlog is a fixed pseudo-random mix of all indexed object types (ordered by md5 of type and id); most objects are interfaces.',
        ],
      };
    } finally {
      await data.database.destroy();
    }
  },
};

function throughputFigures(label: string, durations: readonly number[], objects: number, rows: number): Figure[] {
  return [
    { label: `${label}: time`, unit: 'ms', summary: summarize(durations) },
    { label: `${label}: objects/s`, unit: 'objects/s', summary: summarize(durations.map((ms) => (objects * 1000) / ms)) },
    { label: `${label}: cache rows/s`, unit: 'rows/s', summary: summarize(durations.map((ms) => (rows * 1000) / ms)) },
  ];
}

function smallRunReason(backlog: number): string {
  return `This run measured backlogs up to ${backlog} objects only; run with --size default or full to check the target.`;
}

function missReason(drainers: number): string {
  const claimer = drainers === 1 ? 'The drainer claims' : 'Each drainer claims';
  return (
    `${claimer} batches of 500 outbox rows with SELECT … FOR UPDATE SKIP LOCKED and takes one advisory lock per object. ` +
    'Per batch it deletes the old cache rows, inserts the new ones and deletes the claimed outbox rows. ' +
    'The limit is a single statement with none of that work. Larger batches or fewer statements per batch would narrow the gap.'
  );
}
