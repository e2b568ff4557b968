import { Kysely, PostgresDialect, type PostgresPool } from 'kysely';
import pg from 'pg';
import { createSearchOutbox, type Logger, type SearchOutbox } from '@search-outbox/core';
import { loadConfig, type CliConfig } from './config.js';
import { checkDatabaseUrl, describeServer } from './database-url.js';
import type { CliEnvironment } from './environment.js';
import { UsageError } from './errors.js';
import { createStreamLogger } from './logger.js';
import { parseIntegerOption, parseLogLevel } from './options.js';
import { createProgressBar, type ProgressBar } from './progress.js';

/** Output streams of a command: its output goes to `stdout`, logs and progress bars to `stderr`. */
export interface CliStreams {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
}

/** Seconds to wait for a database connection when neither `--connect-timeout` nor `SEARCH_OUTBOX_CONNECT_TIMEOUT` is set. */
export const DEFAULT_CONNECT_TIMEOUT_SECONDS = 10;
/** Accepted values of `--connect-timeout` and `SEARCH_OUTBOX_CONNECT_TIMEOUT`, in seconds. */
export const CONNECT_TIMEOUT_RANGE = { min: 1, max: 3600 } as const;

/** The connection timeout of a command run, and where it was set, for error messages. */
interface ConnectTimeout {
  readonly seconds: number;
  readonly source: '--connect-timeout' | 'SEARCH_OUTBOX_CONNECT_TIMEOUT' | 'default';
}

/**
 * Messages of pg-pool 3.x for a connection that its connectionTimeoutMillis
 * ended: a new connection still opening, or a wait for a client of a full
 * pool. The commands use one connection at a time, so the pool of 4 is
 * never full and the second case does not arise in practice.
 */
const CONNECT_TIMEOUT_MESSAGES: readonly string[] = [
  'Connection terminated due to connection timeout',
  'timeout exceeded when trying to connect',
];

/** Options that every command accepts. */
export interface CommonOptions {
  readonly databaseUrl?: string;
  readonly config?: string;
  /** `--connect-timeout`, only on the commands that take a configuration. */
  readonly connectTimeout?: string;
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

  /**
   * `--connect-timeout`, else `SEARCH_OUTBOX_CONNECT_TIMEOUT`, else the
   * default. Throws a ValidationError naming the option or the variable when
   * the value is not an integer in CONNECT_TIMEOUT_RANGE.
   */
  get connectTimeout(): ConnectTimeout {
    const { min, max } = CONNECT_TIMEOUT_RANGE;
    if (this.options.connectTimeout !== undefined) {
      return { seconds: parseIntegerOption('--connect-timeout', this.options.connectTimeout, min, max), source: '--connect-timeout' };
    }
    if (this.environment.connectTimeout !== undefined) {
      const seconds = parseIntegerOption('SEARCH_OUTBOX_CONNECT_TIMEOUT', this.environment.connectTimeout, min, max);
      return { seconds, source: 'SEARCH_OUTBOX_CONNECT_TIMEOUT' };
    }
    return { seconds: DEFAULT_CONNECT_TIMEOUT_SECONDS, source: 'default' };
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
    // Read before the configuration loads, so an invalid value fails first.
    const connectTimeout = this.connectTimeout;
    const config = await loadConfig(
      { option: this.options.config, environment: this.environment.configPath, cwd: this.environment.cwd },
      configRequired,
    );
    const db = this.#connect(connectTimeout);
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

  #connect(connectTimeout: ConnectTimeout): Kysely<any> {
    const url = this.databaseUrl;
    if (url === undefined) {
      throw new UsageError('No database given: pass --database-url <url> or set DATABASE_URL');
    }
    // node-postgres 8 ignores connect_timeout in the connection string, and
    // without connectionTimeoutMillis it waits forever for a server that
    // accepts the TCP connection but never responds.
    const pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: connectTimeout.seconds * 1000 });
    // pg emits 'error' on a client whose connection fails, checked out or idle
    // (for example when pg_terminate_backend ends its backend), and an 'error'
    // event without a listener crashes the process. With this listener the
    // query in flight rejects and the command ends through its normal error path.
    pool.on('connect', (client) => {
      client.on('error', (error) => this.logger.warn('database connection failed', { error: error.message }));
    });
    // The pool re-emits the error of an idle client, which the listener above has logged already.
    pool.on('error', () => undefined);
    return new Kysely<any>({ dialect: new PostgresDialect({ pool: explainConnectTimeouts(pool, url, connectTimeout) }) });
  }
}

/**
 * Wraps `pool` so that a connection timeout fails with an error naming the
 * server, the timeout and the setting that raises it. Other errors pass unchanged.
 */
function explainConnectTimeouts(pool: pg.Pool, url: string, timeout: ConnectTimeout): PostgresPool {
  return {
    connect: async () => {
      try {
        return await pool.connect();
      } catch (error) {
        if (!(error instanceof Error) || !CONNECT_TIMEOUT_MESSAGES.includes(error.message)) throw error;
        const origin = timeout.source === 'default' ? 'the default' : `set by ${timeout.source}`;
        throw new Error(
          `Connecting to the database at ${describeServer(url)} timed out after ${timeout.seconds} s (${origin}). ` +
            'Check that the server is running and accepts PostgreSQL connections, or raise --connect-timeout',
          { cause: error },
        );
      }
    },
    end: () => pool.end(),
  };
}
