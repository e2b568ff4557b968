import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import {
  migrate,
  silentLogger,
  type DrainSummary,
  type Logger,
  type MigrateResult,
  type SearchOptions,
  type SearchOutbox,
  type SearchResult,
} from '@search-outbox/core';
import { startLocalPostgres } from '@search-outbox/local-postgres';
import { formatDemoReport } from './demo-report.js';
import { createExampleOutbox } from './example-outbox.js';
import { loadDemoData, type LoadSummary } from './loader.js';
import { buildDemoModel, type DemoModel } from './model.js';
import { createApplicationTables } from './schema.js';

/**
 * Schema of the demo's application tables and cache. A schema of its own
 * keeps the demo from dropping tables of a real NetBox database, whose
 * tables in `public` have the same names.
 */
export const DEMO_SCHEMA = 'netbox_demo';
/** Database the demo creates on the embedded server. */
export const DEMO_DATABASE = 'search_outbox_demo';
const OUTBOX_SCHEMA = 'search_outbox';

/** Reports the progress of the drain, for a progress bar. */
export interface ProgressReporter {
  start(total: number): void;
  update(done: number): void;
  stop(): void;
}

export interface DemoOptions {
  /**
   * Database to run in, used as it is; the demo's schema and outbox rows
   * stay there afterwards. Default: `DATABASE_URL`, else a new database on
   * an embedded server that is removed at the end.
   */
  readonly databaseUrl?: string;
  /** Directory of the NetBox demo data. Default: see `resolveDataDirectory`. */
  readonly dataDirectory?: string;
  readonly logger?: Logger;
  /** Receives the printed report. */
  readonly output: { write(text: string): unknown };
  /** Shows the drain's progress. Default: none. */
  readonly progress?: ProgressReporter;
}

export interface TypeReport {
  readonly objectType: string;
  /** Rows in the source table. */
  readonly objects: number;
  /** Objects with at least one cache row. */
  readonly cachedObjects: number;
  readonly cacheRows: number;
}

export interface SearchExample {
  readonly title: string;
  readonly options: SearchOptions;
  readonly results: readonly SearchResult[];
}

export interface DemoResult {
  readonly embedded: boolean;
  readonly database: string;
  readonly schema: string;
  readonly migrations: MigrateResult;
  readonly load: LoadSummary;
  /** Outbox rows of the tenant marked inside the rolled-back savepoint, counted before the drain. */
  readonly rolledBackOutboxRows: number;
  readonly drain: DrainSummary;
  readonly types: readonly TypeReport[];
  readonly searches: readonly SearchExample[];
  readonly durationMs: number;
}

/**
 * Runs the demo end to end: a PostgreSQL server, migrations, the NetBox
 * demo data loaded through application transactions that mark the outbox,
 * one drain, and example searches, printed to `output`.
 */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const started = Date.now();
  const logger = options.logger ?? silentLogger;
  const model = buildDemoModel(options.dataDirectory);
  const server = await startLocalPostgres({
    ...(options.databaseUrl === undefined ? {} : { databaseUrl: options.databaseUrl }),
    onMessage: (message) => logger.info(message),
  });

  try {
    const url = server.embedded ? await server.createDatabase(DEMO_DATABASE) : server.connectionString;
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 4 }) }) });
    try {
      const result = await runDemoSteps(db, model, logger, options.progress);
      const report: DemoResult = {
        embedded: server.embedded,
        database: describeDatabase(url),
        ...result,
        durationMs: Date.now() - started,
      };
      options.output.write(formatDemoReport(report));
      return report;
    } finally {
      await db.destroy();
    }
  } finally {
    await server.stop();
  }
}

async function runDemoSteps(
  db: Kysely<any>,
  model: DemoModel,
  logger: Logger,
  progress: ProgressReporter | undefined,
): Promise<Omit<DemoResult, 'embedded' | 'database' | 'durationMs'>> {
  const migrations = await migrate(db, { outboxSchema: OUTBOX_SCHEMA, cacheSchemas: [DEMO_SCHEMA], logger });
  await resetDemoSchema(db, model);

  // No inline drain after each commit: the marks wait in the outbox, so the
  // one drain below shows how they coalesce across transactions.
  const outbox = createExampleOutbox(db, { model, logger, outboxSchema: OUTBOX_SCHEMA, dispatcher: 'none' });
  await outbox.verify({ schema: DEMO_SCHEMA });
  const load = await loadDemoData(db, outbox, model, { schema: DEMO_SCHEMA, logger });
  const rolledBackOutboxRows = await countOutboxRows(db, load.rolledBack.objectType, load.rolledBack.id);

  progress?.start(load.outboxRows);
  let drain: DrainSummary;
  try {
    drain = await outbox.drain({ onProgress: (state) => progress?.update(state.claimed) });
  } finally {
    progress?.stop();
  }

  const types = await reportTypes(db, model);
  const searches = await runSearches(outbox, load);
  return { schema: DEMO_SCHEMA, migrations, load, rolledBackOutboxRows, drain, types, searches };
}

/**
 * Recreates the application tables and clears the cache and the outbox rows
 * of the demo schema, so that a second run against the same database starts
 * from the same state as the first.
 */
async function resetDemoSchema(db: Kysely<any>, model: DemoModel): Promise<void> {
  await createApplicationTables(db, DEMO_SCHEMA, model.tables);
  await db.withSchema(DEMO_SCHEMA).deleteFrom('search_cache').execute();
  await db.withSchema(OUTBOX_SCHEMA).deleteFrom('outbox').where('target_schema', '=', DEMO_SCHEMA).execute();
}

async function countOutboxRows(db: Kysely<any>, objectType: string, objectId: string): Promise<number> {
  const row = await db
    .withSchema(OUTBOX_SCHEMA)
    .selectFrom('outbox')
    .select((eb) => eb.fn.countAll<string>().as('rows'))
    .where('target_schema', '=', DEMO_SCHEMA)
    .where('object_type', '=', objectType)
    .where('object_id', '=', objectId)
    .executeTakeFirstOrThrow();
  return Number(row.rows);
}

async function reportTypes(db: Kysely<any>, model: DemoModel): Promise<TypeReport[]> {
  const cached = await db
    .withSchema(DEMO_SCHEMA)
    .selectFrom('search_cache')
    .select([
      'object_type',
      sql<string>`count(DISTINCT object_id)`.as('objects'),
      sql<string>`count(*)`.as('rows'),
    ])
    .groupBy('object_type')
    .execute();
  const cachedByType = new Map(cached.map((row) => [row.object_type as string, row]));

  const types: TypeReport[] = [];
  for (const definition of model.tables) {
    if (definition.objectType === undefined) continue;
    const source = await db
      .withSchema(DEMO_SCHEMA)
      .selectFrom(definition.table)
      .select((eb) => eb.fn.countAll<string>().as('objects'))
      .executeTakeFirstOrThrow();
    const row = cachedByType.get(definition.objectType);
    types.push({
      objectType: definition.objectType,
      objects: Number(source.objects),
      cachedObjects: Number(row?.objects ?? 0),
      cacheRows: Number(row?.rows ?? 0),
    });
  }
  return types;
}

async function runSearches(outbox: SearchOutbox, load: LoadSummary): Promise<SearchExample[]> {
  const examples: { title: string; options: SearchOptions }[] = [
    { title: 'Substring of a name', options: { query: 'akron', limit: 5 } },
    {
      title: 'An IP address: the address itself and the prefixes that contain it',
      options: { query: '192.168.0.5', limit: 5 },
    },
    {
      title: 'Regular expression over device names',
      options: { query: '^dmi01-(akron|albany)-', lookup: 'regex', objectTypes: ['dcim.device'], limit: 5 },
    },
    { title: 'Exact, case-insensitive: a tenant custom field (cf_cust_id)', options: { query: 'ini04', lookup: 'exact' } },
    {
      title: `The tenant inserted in the rolled-back savepoint ("${load.rolledBack.name}")`,
      options: { query: load.rolledBack.name },
    },
  ];

  const searches: SearchExample[] = [];
  for (const example of examples) {
    const options: SearchOptions = { ...example.options, schema: DEMO_SCHEMA };
    searches.push({ title: example.title, options, results: await outbox.search(options) });
  }
  return searches;
}

/** Host, port and database of a connection string, without the credentials. */
function describeDatabase(url: string): string {
  const parsed = new URL(url);
  return `${parsed.hostname}:${parsed.port || '5432'}${parsed.pathname}`;
}
