import { Command } from 'commander';
import { assertMigrated, ValidationError } from '@search-outbox/core';
import { EXIT_SUCCESS, withOptionNames } from '../errors.js';
import { collect } from '../options.js';
import type { CommandBuilder } from '../program.js';

interface RetryCommandOptions {
  readonly type?: string;
  readonly id?: string[];
}

export function registerRetry(program: Command, build: CommandBuilder): void {
  const command = program
    .command('retry')
    .description('Make dead outbox rows pending again, so that the next drain retries them')
    .option('--type <objectType>', 'only rows of this object type (default: every type)')
    .option('--id <objectId>', 'only rows of this object id; repeat for several; needs --type', collect);

  build(command, async (context, options: RetryCommandOptions) => {
    if (options.id !== undefined && options.type === undefined) {
      throw new ValidationError('--id', options.id.join(', '), 'needs --type, because object ids are unique per type only');
    }

    return context.withOutbox(true, async (outbox, config, db) => {
      await assertMigrated(db, config.outboxSchema);
      const objectType = options.type === undefined ? undefined : outbox.indexes.get(options.type, '--type').objectType;
      const objectIds = options.id;
      const result = await withOptionNames(renameIdPath, () =>
        outbox.retry({
          ...(objectType === undefined ? {} : { objectType }),
          ...(objectIds === undefined ? {} : { objectIds }),
        }),
      );

      if (context.json) {
        context.printJson(result);
      } else {
        context.printLines([`Made ${result.retried} dead outbox rows pending again; run \`search-outbox drain\` to process them`]);
      }
      return EXIT_SUCCESS;
    });
  });
}

/** Maps the paths under which core rejects object ids (`id`, `ids`, `ids[2]`, `objectIds`) to `--id`. */
function renameIdPath(path: string): string | undefined {
  return /^(id|ids|ids\[\d+\]|objectIds)$/.test(path) ? '--id' : undefined;
}
