import { Command, CommanderError, Option } from 'commander';
import { errorMessage } from '@search-outbox/core';
import { registerDemo } from './commands/demo.js';
import { registerDev } from './commands/dev.js';
import { registerDrain } from './commands/drain.js';
import { registerInvoke } from './commands/invoke.js';
import { registerMigrate } from './commands/migrate.js';
import { registerRebuild } from './commands/rebuild.js';
import { registerRetry } from './commands/retry.js';
import { registerSearch } from './commands/search.js';
import { registerStatus } from './commands/status.js';
import { CommandContext, CONNECT_TIMEOUT_RANGE, DEFAULT_CONNECT_TIMEOUT_SECONDS, type CliStreams, type CommonOptions } from './context.js';
import type { CliEnvironment } from './environment.js';
import { EXIT_FAILURE, EXIT_SUCCESS, exitCodeOf } from './errors.js';
import { afterQueuedCallbacks, watchEventLoop } from './event-loop.js';
import { LOG_LEVELS } from './logger.js';

/** Runs one command; the returned number is the exit code. */
export type CommandAction = (context: CommandContext, ...args: any[]) => Promise<number>;

/** Function that adds the options every command accepts and wires the action to a CommandContext. */
export interface CommandBuilder {
  (command: Command, action: CommandAction, options?: { config?: boolean }): Command;
}

const EXIT_CODES_HELP = `
Exit codes:
  0  success
  1  the command failed (database error, failed migration, objects that failed in a drain)
  2  invalid usage or input (unknown option, invalid value, missing or invalid configuration)

Environment:
  DATABASE_URL             PostgreSQL connection string, used when --database-url is not given
  SEARCH_OUTBOX_CONFIG     configuration module, used when --config is not given
  SEARCH_OUTBOX_CONNECT_TIMEOUT
                           seconds to wait for a database connection, used when --connect-timeout is not given
  SEARCH_OUTBOX_DEMO_DATA  directory of the NetBox demo CSV files for \`demo\`, used when --data is not given
                           (default: <repo>/../shared/data/netbox-demo, beside the repository)`;

/**
 * Parses `argv` (without the node and script paths) and runs the command.
 * Errors are written to stderr and returned as an exit code, not thrown.
 * A command still pending when the event loop has nothing left to run fails
 * with exit code 1 and a message. Without this check, a binary that awaits
 * runCli at the top level would end with Node's code 13 and no message.
 */
export async function runCli(argv: readonly string[], environment: CliEnvironment, streams: CliStreams): Promise<number> {
  let exitCode = EXIT_SUCCESS;
  const build: CommandBuilder = (command, action, options = {}) => {
    command.option('--database-url <url>', 'PostgreSQL connection string (default: DATABASE_URL)');
    // The commands with a configuration are those that connect through
    // CommandContext.withOutbox, which applies the connection timeout.
    if (options.config !== false) {
      command
        .option(
          '--config <file>',
          'configuration module exporting "indexes" (default: SEARCH_OUTBOX_CONFIG, else search-outbox.config.js or .mjs in the working directory)',
        )
        .option(
          '--connect-timeout <seconds>',
          `seconds to wait for a database connection, ${CONNECT_TIMEOUT_RANGE.min} to ${CONNECT_TIMEOUT_RANGE.max} ` +
            `(default: SEARCH_OUTBOX_CONNECT_TIMEOUT, else ${DEFAULT_CONNECT_TIMEOUT_SECONDS})`,
        );
    }
    command
      .option('--json', 'print the result as JSON on stdout')
      .addOption(new Option('--log-level <level>', 'lowest level of log lines on stderr').choices(LOG_LEVELS).default('warn'))
      .action(async (...args: unknown[]) => {
        const commandObject = args[args.length - 1] as Command;
        const positional = args.slice(0, -2);
        const context = new CommandContext(environment, streams, commandObject.opts<CommonOptions>());
        exitCode = await action(context, ...positional, commandObject.opts());
      });
    return command;
  };

  const program = createProgram(streams, build);
  const eventLoop = watchEventLoop();
  try {
    const stalled = eventLoop.emptied.then(afterQueuedCallbacks).then((): never => {
      throw new Error(
        'The command never finished: it was still waiting when the process had nothing left to run, ' +
          'so nothing could settle what it awaited. Run it again with --log-level debug to see its last step',
      );
    });
    await Promise.race([program.parseAsync(argv, { from: 'user' }), stalled]);
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander has already printed its message (or the help text).
      return exitCodeOf(error);
    }
    streams.stderr.write(`error: ${errorMessage(error)}\n`);
    const code = exitCodeOf(error);
    if (code === EXIT_FAILURE && error instanceof Error && error.cause !== undefined) {
      streams.stderr.write(`cause: ${errorMessage(error.cause)}\n`);
    }
    if (isUndefinedTable(error)) {
      streams.stderr.write('hint: run `search-outbox migrate` first (with --cache-schema for each cache schema)\n');
    }
    return code;
  } finally {
    eventLoop.dispose();
  }
}

function createProgram(streams: CliStreams, build: CommandBuilder): Command {
  const program = new Command('search-outbox')
    .description('Keep a PostgreSQL search cache in step with application data through a transactional outbox.')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({
      writeOut: (text) => streams.stdout.write(text),
      writeErr: (text) => streams.stderr.write(text),
    })
    .addHelpText('after', EXIT_CODES_HELP);

  registerMigrate(program, build);
  registerDrain(program, build);
  registerRebuild(program, build);
  registerStatus(program, build);
  registerSearch(program, build);
  registerRetry(program, build);
  registerInvoke(program, build);
  registerDemo(program, build);
  registerDev(program, build);

  return program;
}

/** SQLSTATE 42P01 (undefined_table): usually a schema that was never migrated. */
function isUndefinedTable(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === '42P01';
}
