import { Command } from 'commander';
import { migrate } from '@search-outbox/core';
import { EXIT_SUCCESS } from '../errors.js';
import { collect, parseSchema } from '../options.js';
import type { CommandBuilder } from '../program.js';

interface MigrateOptions {
  readonly cacheSchema?: string[];
}

export function registerMigrate(program: Command, build: CommandBuilder): void {
  const command = program
    .command('migrate')
    .description('Create or upgrade the outbox and the search cache tables')
    .option(
      '--cache-schema <schema>',
      'schema that holds a search cache; repeat for several (default: the configuration\'s cacheSchemas or schema, else public)',
      collect,
    );

  build(
    command,
    async (context, options: MigrateOptions) => {
      const schemaOptions = options.cacheSchema?.map((schema) => parseSchema('--cache-schema', schema));
      return context.withOutbox(false, async (_outbox, config, db) => {
        const cacheSchemas = schemaOptions ?? config.cacheSchemas;
        const result = await migrate(db, { outboxSchema: config.outboxSchema, cacheSchemas, logger: context.logger });

        if (context.json) {
          context.printJson({ outboxSchema: config.outboxSchema, cacheSchemas, applied: result.applied });
        } else if (result.applied.length === 0) {
          context.printLines([`Up to date: outbox schema ${config.outboxSchema}, cache schemas ${cacheSchemas.join(', ')}`]);
        } else {
          context.printLines([
            `Applied ${result.applied.length} migrations:`,
            ...result.applied.map((m) => `  ${m.schema}: ${m.scope} ${m.version} ${m.name}`),
          ]);
        }
        return EXIT_SUCCESS;
      });
    },
    { config: true },
  );
}
