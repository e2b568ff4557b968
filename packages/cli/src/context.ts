import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { createSearchOutbox, type Logger, type SearchOutbox } from '@search-outbox/core';
import { loadConfig, type CliConfig } from './config.js';
import { checkDatabaseUrl } from './database-url.js';
import type { CliEnvironment } from './environment.js';
import { UsageError } from './errors.js';
import { createStreamLogger } from './logger.js';
import { parseLogLevel } from './options.js';
import { createProgressBar, type ProgressBar } from './progress.js';

/** Output streams of a command: its output goes to `stdout`, logs and progress bars to `stderr`. */
export interface CliStreams {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
}

/** Options that every command accepts. */
export interface CommonOptions {
  readonly databaseUrl?: string;
  readonly config?: string;
  readonly json?: boolean;
  readonly logLevel: string;
}

/** Settings, logger and output helpers of one command run. */
export class CommandContext {
  readonly environment: CliEnvironment;
  readonly streams: CliStreams;
  readonly options: CommonOptions;
  readonly logger: Logger;

  constructor(environment: CliEnvironment, streams: CliStreams, options: CommonOptions) {
    this.environment = environment;
    this.streams = streams;
    this.options = options;
    this.logger = createStreamLogger(streams.stderr, parseLogLevel(options.logLevel));
  }

  get json(): boolean {
    return this.options.json === true;
  }

  /**
   * `--database-url`, else `DATABASE_URL`, else undefined. Throws a
   * ValidationError naming the option or the variable when the connection
   * string is invalid.
   */
  get databaseUrl(): string | undefined {
    if (this.options.databaseUrl !== undefined) return checkDatabaseUrl('--database-url', this.options.databaseUrl);
    if (this.environment.databaseUrl !== undefined) return checkDatabaseUrl('DATABASE_URL', this.environment.databaseUrl);
    return undefined;
  }

  /** Creates a progress bar on stderr when it is a terminal and the output is not JSON. */
  createProgressBar(): ProgressBar {
    return createProgressBar(this.environment.interactive && !this.json);
  }

  printJson(value: unknown): void {
    this.streams.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  printLines(lines: readonly string[]): void {
    if (lines.length > 0) this.streams.stdout.write(`${lines.join('\n')}\n`);
  }

  /**
   * Loads the configuration, connects to the database and runs `work` with
   * an outbox, then closes the connections. The outbox has no dispatcher,
   * because the CLI makes no writes of its own to dispatch.
   */
  async withOutbox<T>(
    configRequired: boolean,
    work: (outbox: SearchOutbox, config: CliConfig, db: Kysely<any>) => Promise<T>,
  ): Promise<T> {
    const config = await loadConfig(
      { option: this.options.config, environment: this.environment.configPath, cwd: this.environment.cwd },
      configRequired,
    );
    const db = this.#connect();
    try {
      const outbox = createSearchOutbox({
        db,
        indexes: config.indexes,
        outboxSchema: config.outboxSchema,
        logger: this.logger,
        dispatcher: 'none',
      });
      return await work(outbox, config, db);
    } finally {
      await db.destroy();
    }
  }

  #connect(): Kysely<any> {
    const url = this.databaseUrl;
    if (url === undefined) {
      throw new UsageError('No database given: pass --database-url <url> or set DATABASE_URL');
    }
    const pool = new pg.Pool({ connectionString: url, max: 4 });
    // pg emits 'error' on a client whose connection fails, checked out or idle
    // (for example when pg_terminate_backend ends its backend), and an 'error'
    // event without a listener crashes the process. With this listener the
    // query in flight rejects and the command ends through its normal error path.
    pool.on('connect', (client) => {
      client.on('error', (error) => this.logger.warn('database connection failed', { error: error.message }));
    });
    // The pool re-emits the error of an idle client, which the listener above has logged already.
    pool.on('error', () => undefined);
    return new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
  }
}
