import { randomBytes } from 'node:crypto';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { inject } from 'vitest';

/** A fresh database on the test server, with a Kysely instance on a pool. */
export interface TestDatabase {
  readonly url: string;
  readonly name: string;
  readonly db: Kysely<any>;
  /** Opens another pool on the same database, closed by `destroy`. */
  connect(options?: { max?: number }): Kysely<any>;
  destroy(): Promise<void>;
}

/** Creates a database named after `label` plus a random suffix, so test files never share one. */
export async function createTestDatabase(label: string, options: { max?: number } = {}): Promise<TestDatabase> {
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
  const connect = (connectOptions: { max?: number } = {}): Kysely<any> => {
    const pool = new pg.Pool({ connectionString: databaseUrl, max: connectOptions.max ?? 10 });
    // Tests terminate backends on purpose, and DROP DATABASE WITH (FORCE)
    // terminates connections that are still closing. pg emits 'error' on
    // such a connection; the query in flight, if any, still rejects.
    pool.on('error', () => {});
    pool.on('connect', (client) => client.on('error', () => {}));
    const instance = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    instances.push(instance);
    return instance;
  };
  const db = connect(options);

  return {
    url: databaseUrl,
    name,
    db,
    connect,
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
