import { Command } from 'commander';
import { assertMigrated, type DrainSummary } from '@search-outbox/core';
import { EXIT_FAILURE, EXIT_SUCCESS } from '../errors.js';
import { parseOptionalInteger } from '../options.js';
import type { CommandBuilder } from '../program.js';
import { stopOnInterrupt } from '../interrupt.js';

interface DrainCommandOptions {
  readonly batchSize?: string;
  readonly timeBudget?: string;
  readonly maxBatches?: string;
}

export function registerDrain(program: Command, build: CommandBuilder): void {
  const command = program
    .command('drain')
    .description('Rebuild the cache rows of every object marked in the outbox, until the outbox is empty')
    .option('--batch-size <rows>', 'outbox rows claimed per batch, 1 to 10000 (default: 500)')
    .option('--time-budget <ms>', 'stop starting batches after this many milliseconds (default: no limit)')
    .option('--max-batches <count>', 'stop after this many batches (default: no limit)')
    .addHelpText(
      'after',
      '\nExits with 1 when objects failed or were parked as dead in this drain (see `status` and `retry`);\n' +
        'stopping at --time-budget or --max-batches with rows left is a success.',
    );

  build(command, async (context, options: DrainCommandOptions) => {
    const batchSize = parseOptionalInteger('--batch-size', options.batchSize, 1, 10_000);
    const timeBudgetMs = parseOptionalInteger('--time-budget', options.timeBudget, 1, 86_400_000);
    const maxBatches = parseOptionalInteger('--max-batches', options.maxBatches, 1, 1_000_000_000);

    return context.withOutbox(true, async (outbox, config, db) => {
      await assertMigrated(db, config.outboxSchema);
      const progress = context.createProgressBar();
      const pending = (await outbox.status()).pending;
      const interrupt = stopOnInterrupt(context.logger);
      progress.start(pending, 'drain');
      let summary: DrainSummary;
      try {
        summary = await outbox.drain({
          ...(batchSize === undefined ? {} : { batchSize }),
          ...(timeBudgetMs === undefined ? {} : { timeBudgetMs }),
          ...(maxBatches === undefined ? {} : { maxBatches }),
          signal: interrupt.signal,
          onProgress: (state) => progress.update(state.claimed),
        });
      } finally {
        progress.stop();
        interrupt.dispose();
      }

      if (context.json) {
        context.printJson(summary);
      } else {
        context.printLines([
          `Claimed ${summary.claimed} outbox rows for ${summary.objects} objects in ${summary.batches} batches (${summary.durationMs} ms)`,
          `  rebuilt ${summary.rebuilt}, removed ${summary.removed}, failed ${summary.failed}, dead ${summary.dead}, skipped ${summary.skipped}`,
          `  remaining ${summary.remaining}; stopped: ${summary.stoppedBy}`,
          ...(summary.deadRetired > 0
            ? [`  ${summary.deadRetired} dead rows retired: a later rebuild of their objects succeeded`]
            : []),
        ]);
      }
      const failed = summary.failed > 0 || summary.dead > 0 || summary.stoppedBy === 'aborted';
      return failed ? EXIT_FAILURE : EXIT_SUCCESS;
    });
  });
}
