/**
 * The environment variables the CLI reads, all in one place. Precedence for
 * each setting: the command-line option, then the variable, then the default.
 */
export interface CliEnvironment {
  /** `DATABASE_URL`: connection string of the application's database. */
  readonly databaseUrl: string | undefined;
  /** `SEARCH_OUTBOX_CONFIG`: path of the configuration module. */
  readonly configPath: string | undefined;
  /** `SEARCH_OUTBOX_CONNECT_TIMEOUT`: seconds to wait for a database connection, as text that is checked when a command connects. */
  readonly connectTimeout?: string | undefined;
  /** `SEARCH_OUTBOX_DEMO_DATA`: directory of the NetBox demo CSV files, for `demo`. */
  readonly demoDataDirectory: string | undefined;
  /** The directory relative paths are resolved against, and where the default configuration is looked up. */
  readonly cwd: string;
  /** True when stderr is a terminal, so progress bars can be drawn. */
  readonly interactive: boolean;
}

export function readEnvironment(): CliEnvironment {
  return {
    databaseUrl: nonEmpty(process.env.DATABASE_URL),
    configPath: nonEmpty(process.env.SEARCH_OUTBOX_CONFIG),
    connectTimeout: nonEmpty(process.env.SEARCH_OUTBOX_CONNECT_TIMEOUT),
    demoDataDirectory: nonEmpty(process.env.SEARCH_OUTBOX_DEMO_DATA),
    cwd: process.cwd(),
    interactive: process.stderr.isTTY === true,
  };
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}
