import { startLocalPostgres, type LocalPostgres } from '@search-outbox/local-postgres';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';

/** Size class of a run: `smoke` proves the code runs (tests), `default` and `full` measure. */
export type SizeClass = 'smoke' | 'default' | 'full';

/** A database created for one scenario, dropped by `destroy`. */
export interface BenchDatabase {
  readonly url: string;
  readonly db: Kysely<any>;
  /** Opens another pool on the same database; closed by `destroy`. */
  connect(max?: number): Kysely<any>;
  destroy(): Promise<void>;
}

/** Settings and services that the harness passes to every scenario. */
export interface BenchContext {
  readonly size: SizeClass;
  /** Repetitions per figure (min / median / max are taken over them). */
  readonly runs: number;
  /** Directory of the NetBox demo CSV files and search-indexes.json. */
  readonly dataDirectory: string;
  createDatabase(label: string): Promise<BenchDatabase>;
  /** Progress line for the person running the benchmark (stderr). */
  log(message: string): void;
}

let databaseCounter = 0;

/** Creates a context on a started server; `createDatabase` makes a fresh database per call. */
export function createBenchContext(
  server: LocalPostgres,
  settings: { size: SizeClass; runs: number; dataDirectory: string; log: (message: string) => void },
): BenchContext {
  return {
    ...settings,
    async createDatabase(label: string): Promise<BenchDatabase> {
      databaseCounter += 1;
      const name = `bench_${label.replace(/[^a-z0-9_]/g, '_').slice(0, 30)}_${process.pid}_${databaseCounter}`;
      const url = await server.createDatabase(name);
      const pools: Kysely<any>[] = [];
      const connect = (max = 10): Kysely<any> => {
        const pool = new pg.Pool({ connectionString: url, max });
        pool.on('connect', (client) => client.on('error', () => {}));
        pool.on('error', () => {});
        const db = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
        pools.push(db);
        return db;
      };
      const db = connect();
      return {
        url,
        db,
        connect,
        async destroy() {
          await Promise.all(pools.map((pool) => pool.destroy()));
          const admin = new pg.Client({ connectionString: server.connectionString });
          await admin.connect();
          try {
            await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
          } finally {
            await admin.end();
          }
        },
      };
    },
  };
}

export { startLocalPostgres };
