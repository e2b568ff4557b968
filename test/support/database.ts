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
    const instance = new Kysely<any>({
      dialect: new PostgresDialect({
        pool: new pg.Pool({ connectionString: databaseUrl, max: connectOptions.max ?? 10 }),
      }),
    });
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
      const cleanup = new pg.Client({ connectionString: serverUrl });
      await cleanup.connect();
      try {
        await cleanup.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      } finally {
        await cleanup.end();
      }
    },
  };
}
