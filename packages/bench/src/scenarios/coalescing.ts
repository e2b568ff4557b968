import { sql } from 'kysely';
import type { BenchContext } from '../context.js';
import type { Figure, ScenarioResult, TargetCheck } from '../results.js';
import { createBenchData, truncateOutbox } from '../scale.js';
import type { Scenario } from '../scenario.js';
import { summarize, time } from '../stats.js';

const SIZES = {
  smoke: { commits: 100, objects: 10 },
  default: { commits: 1_000, objects: 100 },
  full: { commits: 1_000, objects: 100 },
} as const;

/**
 * Cross-transaction coalescing: many single-object transactions, each
 * updating one interface's description and marking it, cycle over a small
 * set of interfaces; then one drain runs. Every mark of an object should
 * end in a single rebuild of that object.
 */
export const coalescingScenario: Scenario = {
  id: 'coalescing',
  title: 'Cross-transaction coalescing',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { commits, objects } = SIZES[context.size];
    const data = await createBenchData(context, 'coalescing');
    try {
      const db = data.database.db;
      const result = await sql<{ id: string }>`SELECT id::text AS id FROM dcim_interface ORDER BY id LIMIT ${objects}`.execute(db);
      const ids = result.rows.map((row) => row.id);
      if (ids.length < objects) throw new Error(`The demo data has ${ids.length} interfaces; ${objects} are needed`);

      const rebuilds: number[] = [];
      const claimed: number[] = [];
      const commitTimes: number[] = [];
      const drainTimes: number[] = [];
      for (let run = 0; run < context.runs; run += 1) {
        await truncateOutbox(db);
        commitTimes.push(
          await time(async () => {
            for (let commit = 0; commit < commits; commit += 1) {
              const id = ids[commit % ids.length] as string;
              await data.outbox.transaction(async (trx) => {
                await sql`UPDATE dcim_interface SET description = ${`edit ${run}.${commit}`} WHERE id = ${id}::bigint`.execute(trx);
                await data.outbox.mark(trx, 'dcim.interface', id);
              });
            }
          }),
        );
        let summary: Awaited<ReturnType<typeof data.outbox.drain>> | undefined;
        drainTimes.push(await time(async () => (summary = await data.outbox.drain())));
        if (summary === undefined) throw new Error('The drain returned no summary');
        rebuilds.push(summary.rebuilt + summary.removed);
        claimed.push(summary.claimed);
        context.log(`coalescing: run ${run + 1}: ${summary.claimed} outbox rows, ${summary.rebuilt + summary.removed} rebuilds`);
      }

      const figures: Figure[] = [
        { label: 'object rebuilds in the drain', unit: 'rebuilds', summary: summarize(rebuilds) },
        { label: 'outbox rows claimed', unit: 'rows', summary: summarize(claimed) },
        { label: `${commits} single-object commits`, unit: 'ms', summary: summarize(commitTimes) },
        { label: 'drain', unit: 'ms', summary: summarize(drainTimes) },
      ];
      const worst = Math.max(...rebuilds);
      const targets: TargetCheck[] = [
        {
          target: `at most ${objects} rebuilds for ${commits} commits on ${objects} objects`,
          measured: `${worst} rebuilds (max over ${context.runs} run${context.runs === 1 ? '' : 's'})`,
          met: worst <= objects,
          ...(worst <= objects
            ? {}
            : { reason: 'The drain split the marks of some objects over several batches, so those objects were rebuilt more than once.' }),
        },
      ];
      return {
        id: this.id,
        title: this.title,
        parameters: { commits, objects, 'object type': 'dcim.interface', dispatcher: 'none' },
        figures,
        ratios: [
          { label: 'outbox rows per rebuild', figure: 'outbox rows claimed', baseline: 'object rebuilds in the drain', value: median(claimed) / median(rebuilds) },
        ],
        targets,
        notes: ['Each commit updates one interface and marks it. The outbox has no dispatcher, so no drain runs until the single drain after the last commit.'],
      };
    } finally {
      await data.database.destroy();
    }
  },
};

function median(values: readonly number[]): number {
  return summarize(values).median;
}
