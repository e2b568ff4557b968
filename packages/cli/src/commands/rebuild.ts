import { Command } from 'commander';
import type { RebuildSummary } from '@search-outbox/core';
import { EXIT_FAILURE, EXIT_SUCCESS } from '../errors.js';
import { collect, parseObjectTypes, parseOptionalInteger, parseSchema } from '../options.js';
import type { CommandBuilder } from '../program.js';
import { stopOnInterrupt } from '../interrupt.js';

interface RebuildCommandOptions {
  readonly type?: string[];
  readonly schema?: string;
  readonly chunkSize?: string;
  readonly restart?: boolean;
}

export function registerRebuild(program: Command, build: CommandBuilder): void {
  const command = program
    .command('rebuild')
    .description('Rebuild the cache of object types from their tables, replacing stale rows; resumes an interrupted rebuild')
    .option('--type <objectType>', 'object type to rebuild; repeat for several (default: every declared type)', collect)
    .option('--schema <schema>', 'schema of the tables and the cache (default: the configuration\'s schema, else public)')
    .option('--chunk-size <objects>', 'objects rebuilt per transaction, 1 to 50000 (default: 1000)')
    .option('--restart', 'start over instead of resuming an interrupted rebuild');

  build(command, async (context, options: RebuildCommandOptions) => {
    const chunkSize = parseOptionalInteger('--chunk-size', options.chunkSize, 1, 50_000);

    return context.withOutbox(true, async (outbox, config) => {
      const schema = options.schema === undefined ? config.schema : parseSchema('--schema', options.schema);
      const objectTypes = parseObjectTypes(outbox.indexes, options.type);
      const progress = context.createProgressBar();
      const interrupt = stopOnInterrupt(context.logger);
      let currentType: string | undefined;
      let summary: RebuildSummary;
      try {
        summary = await outbox.rebuild({
          schema,
          ...(objectTypes === undefined ? {} : { objectTypes }),
          ...(chunkSize === undefined ? {} : { chunkSize }),
          restart: options.restart === true,
          signal: interrupt.signal,
          onProgress: (state) => {
            if (state.objectType !== currentType) {
              currentType = state.objectType;
              progress.start(state.total, state.objectType);
            }
            progress.update(state.done);
          },
        });
      } finally {
        progress.stop();
        interrupt.dispose();
      }

      if (context.json) {
        context.printJson(summary);
      } else {
        context.printLines(formatRebuild(summary));
      }
      return summary.aborted ? EXIT_FAILURE : EXIT_SUCCESS;
    });
  });
}

function formatRebuild(summary: RebuildSummary): string[] {
  const lines = [`Rebuilt schema ${summary.schema} in ${summary.durationMs} ms${summary.aborted ? ' (interrupted: run again to resume)' : ''}`];
  lines.push(`  ${'object type'.padEnd(32)}${'objects'.padStart(9)}${'rows'.padStart(9)}${'stale'.padStart(9)}`);
  for (const type of summary.types) {
    const resumed = type.resumed ? '  (resumed)' : '';
    lines.push(
      `  ${type.objectType.padEnd(32)}${String(type.objects).padStart(9)}${String(type.rows).padStart(9)}` +
        `${String(type.staleRowsRemoved).padStart(9)}${resumed}`,
    );
  }
  if (summary.undeclaredRowsRemoved > 0) {
    lines.push(`  removed ${summary.undeclaredRowsRemoved} rows of object types that are no longer declared`);
  }
  return lines;
}
