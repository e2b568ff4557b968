import { randomBytes } from 'node:crypto';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { inject } from 'vitest';

/** Settings of a test pool. */
export interface TestPoolOptions {
  /** Default: 10. */
  readonly max?: number;
  /** Time to wait for a free or new connection before failing, in milliseconds. Default: no limit. */
  readonly connectionTimeoutMillis?: number;
  /** `application_name` of the sessions, so that a test can find them in pg_stat_activity. */
  readonly applicationName?: string;
}

/**
 * Opens a pool whose connections may be terminated without crashing the
 * test: tests terminate backends and restart servers on purpose, and pg
 * emits 'error' on such a connection. The query in flight, if any, still
 * rejects.
 */
export function openTolerantPool(connectionString: string, options: TestPoolOptions = {}): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max: options.max ?? 10,
    ...(options.connectionTimeoutMillis === undefined ? {} : { connectionTimeoutMillis: options.connectionTimeoutMillis }),
    ...(options.applicationName === undefined ? {} : { application_name: options.applicationName }),
  });
  pool.on('error', () => {});
  pool.on('connect', (client) => client.on('error', () => {}));
  return pool;
}

/** A fresh database on the test server, with a Kysely instance on a pool. */
export interface TestDatabase {
  readonly url: string;
  readonly name: string;
  readonly db: Kysely<any>;
  /** Opens another pool on the same database, closed by `destroy`. */
  connect(options?: TestPoolOptions): Kysely<any>;
  /** Like `connect`, and also returns the pg pool, for tests that check out its clients. */
  connectPool(options?: TestPoolOptions): { pool: pg.Pool; db: Kysely<any> };
  destroy(): Promise<void>;
}

/** Creates a database named after `label` plus a random suffix, so test files never share one. */
export async function createTestDatabase(label: string, options: TestPoolOptions = {}): Promise<TestDatabase> {
  const serverUrl = inject('postgresUrl');
  const name = `t_${label.replace(/[^a-z0-9_]/g, '_').slice(0, 40)}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const databaseUrl = url.toString();

  const instances: Kysely<any>[] = [];
  // DROP DATABASE WITH (FORCE) also terminates connections that are still closing.
  const connectPool = (connectOptions: TestPoolOptions = {}): { pool: pg.Pool; db: Kysely<any> } => {
    const pool = openTolerantPool(databaseUrl, connectOptions);
    const instance = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    instances.push(instance);
    return { pool, db: instance };
  };
  const connect = (connectOptions: TestPoolOptions = {}): Kysely<any> => connectPool(connectOptions).db;
  const db = connect(options);

  return {
    url: databaseUrl,
    name,
    db,
    connect,
    connectPool,
    destroy: async () => {
      await Promise.all(instances.map((instance) => instance.destroy()));
      await dropDatabase(serverUrl, name);
    },
  };
}

/** SQLSTATE of insufficient privilege. */
const INSUFFICIENT_PRIVILEGE = '42501';

/**
 * Drops a test database, terminating its connections. A role without
 * superuser rights cannot terminate a backend that is still authenticating
 * (it has no role yet), so the drop is retried while such a connection
 * from a just-stopped child process finishes.
 */
async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  for (let attempt = 1; ; attempt += 1) {
    const cleanup = new pg.Client({ connectionString: serverUrl });
    await cleanup.connect();
    try {
      await cleanup.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      return;
    } catch (error) {
      if ((error as { code?: unknown }).code !== INSUFFICIENT_PRIVILEGE || attempt >= 20) throw error;
    } finally {
      await cleanup.end();
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
