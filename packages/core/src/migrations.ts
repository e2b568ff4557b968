import { sql, type Kysely, type Transaction } from 'kysely';
import { MigrationError, ValidationError } from './errors.js';
import { assertIdentifier, table } from './identifiers.js';
import { validateLogger, type Logger } from './logger.js';

/**
 * The target of a migration: `outbox` migrations run once in the outbox
 * schema, and `cache` migrations run once in every schema with a cache.
 */
type MigrationScope = 'outbox' | 'cache';

interface Migration {
  readonly version: number;
  readonly name: string;
  readonly scope: MigrationScope;
  up(trx: Transaction<any>, schema: string, logger: Logger): Promise<void>;
}

/** Name of the cache table in every cache schema. Other tools may read it. */
export const CACHE_TABLE = 'search_cache';
/** Name of the outbox table in the outbox schema. */
export const OUTBOX_TABLE = 'outbox';
/** Default schema of the outbox, its migrations and rebuild progress. */
export const DEFAULT_OUTBOX_SCHEMA = 'search_outbox';
const MIGRATIONS_TABLE = 'migrations';
/** Characters of each value in the btree index for exact and starts-with lookups. */
export const INDEXED_VALUE_PREFIX = 500;

/**
 * Numbered, append-only migrations. A released migration is never edited:
 * a change to the schema is a new entry with the next version.
 */
const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'create_outbox',
    scope: 'outbox',
    async up(trx, schema) {
      // The unique key includes the writing transaction's id, so a mark
      // coalesces with earlier marks of its own transaction and never with
      // another transaction's row. Concurrent writers therefore never wait on
      // each other (tested with pg_locks in the concurrency tests).
      await sql`
        CREATE TABLE ${table(schema, OUTBOX_TABLE)} (
          id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          transaction_id xid8 NOT NULL,
          target_schema text NOT NULL,
          object_type text NOT NULL,
          object_id text NOT NULL,
          operation text NOT NULL CHECK (operation IN ('upsert', 'delete')),
          state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
          attempts integer NOT NULL DEFAULT 0,
          available_at timestamptz NOT NULL DEFAULT now(),
          created_at timestamptz NOT NULL DEFAULT now(),
          last_error text,
          CONSTRAINT outbox_mark_key UNIQUE (transaction_id, target_schema, object_type, object_id)
        )
      `.execute(trx);
      await sql`
        CREATE INDEX outbox_pending_idx ON ${table(schema, OUTBOX_TABLE)} (id)
        WHERE state = 'pending'
      `.execute(trx);
      await sql`
        CREATE INDEX outbox_object_idx ON ${table(schema, OUTBOX_TABLE)} (object_type, object_id)
      `.execute(trx);
    },
  },
  {
    version: 2,
    name: 'create_rebuild_progress',
    scope: 'outbox',
    async up(trx, schema) {
      await sql`
        CREATE TABLE ${table(schema, 'rebuild_progress')} (
          target_schema text NOT NULL,
          object_type text NOT NULL,
          last_key text,
          objects bigint NOT NULL DEFAULT 0,
          started_at timestamptz NOT NULL DEFAULT now(),
          updated_at timestamptz NOT NULL DEFAULT now(),
          finished_at timestamptz,
          PRIMARY KEY (target_schema, object_type)
        )
      `.execute(trx);
    },
  },
  {
    version: 3,
    name: 'index_dead_rows',
    scope: 'outbox',
    async up(trx, schema) {
      // Each drain batch looks up the dead rows of the objects it rebuilt,
      // to retire them. Dead rows are few, so this index stays small, and
      // without it the lookup scans the whole outbox for every batch.
      await sql`
        CREATE INDEX outbox_dead_idx ON ${table(schema, OUTBOX_TABLE)} (object_type, object_id)
        WHERE state = 'dead'
      `.execute(trx);
    },
  },
  {
    version: 4,
    name: 'track_rebuild_runs',
    scope: 'outbox',
    async up(trx, schema) {
      // A rebuild of several types records which run rebuilt each type, so
      // that a resumed run skips the types that the interrupted run finished.
      await sql`
        ALTER TABLE ${table(schema, 'rebuild_progress')}
        ADD COLUMN run_key text,
        ADD COLUMN run_id text
      `.execute(trx);
    },
  },
  {
    version: 1,
    name: 'create_search_cache',
    scope: 'cache',
    async up(trx, schema) {
      // One row per (object, field): the primary key makes a duplicate cache
      // row impossible rather than merely unlikely.
      await sql`
        CREATE TABLE ${table(schema, CACHE_TABLE)} (
          object_type text NOT NULL,
          object_id text NOT NULL,
          field text NOT NULL,
          type text NOT NULL,
          value text NOT NULL,
          weight smallint NOT NULL,
          PRIMARY KEY (object_type, object_id, field)
        )
      `.execute(trx);
      // Exact lookups compare lower(value); text_pattern_ops also serves
      // starts-with lookups, whatever the database collation. The IP indexes
      // wrap their casts in CASE, so that a search that uses the same
      // expression never casts a value of another type.
      await sql`
        CREATE INDEX search_cache_lower_value_idx ON ${table(schema, CACHE_TABLE)}
        (lower(value) text_pattern_ops)
      `.execute(trx);
      await sql`
        CREATE INDEX search_cache_inet_host_idx ON ${table(schema, CACHE_TABLE)}
        ((CASE WHEN type = 'inet' THEN host(value::inet) END)) WHERE type = 'inet'
      `.execute(trx);
      await sql`
        CREATE INDEX search_cache_cidr_idx ON ${table(schema, CACHE_TABLE)}
        USING gist ((CASE WHEN type = 'cidr' THEN value::cidr END) inet_ops) WHERE type = 'cidr'
      `.execute(trx);
    },
  },
  {
    version: 2,
    name: 'create_trigram_index',
    scope: 'cache',
    async up(trx, schema, logger) {
      const extensionSchema = await ensureTrigramExtension(trx, logger);
      if (extensionSchema === undefined) return;
      // A trigram index serves substring, suffix and regex lookups.
      await sql`
        CREATE INDEX search_cache_value_trgm_idx ON ${table(schema, CACHE_TABLE)}
        USING gin (value ${sql.id(extensionSchema, 'gin_trgm_ops')})
      `.execute(trx);
    },
  },
  {
    version: 3,
    name: 'index_value_prefix',
    scope: 'cache',
    async up(trx, schema) {
      // A btree entry may not exceed 2704 bytes, so indexing lower(value)
      // made every value longer than that fail its object's rebuild. The
      // first 500 characters (at most 2000 bytes of UTF-8) are enough,
      // because queries are at most 500 characters long.
      await sql`DROP INDEX ${table(schema, 'search_cache_lower_value_idx')}`.execute(trx);
      await sql`
        CREATE INDEX search_cache_lower_value_prefix_idx ON ${table(schema, CACHE_TABLE)}
        (lower(left(value, ${sql.lit(INDEXED_VALUE_PREFIX)})) text_pattern_ops)
      `.execute(trx);
    },
  },
];

/** The newest version of each scope that this code can apply. */
export const LATEST_VERSIONS: Readonly<Record<MigrationScope, number>> = {
  outbox: Math.max(...MIGRATIONS.filter((m) => m.scope === 'outbox').map((m) => m.version)),
  cache: Math.max(...MIGRATIONS.filter((m) => m.scope === 'cache').map((m) => m.version)),
};

export interface MigrateOptions {
  /** Schema of the outbox and the migrations table. Default: `search_outbox`. */
  readonly outboxSchema?: string;
  /** Schemas that hold a search cache: one per tenant schema. Default: `['public']`. */
  readonly cacheSchemas?: readonly string[];
  /** Receives one line per applied migration. Default: silent. */
  readonly logger?: Logger;
}

export interface AppliedMigration {
  readonly schema: string;
  readonly scope: MigrationScope;
  readonly version: number;
  readonly name: string;
}

export interface MigrateResult {
  readonly applied: readonly AppliedMigration[];
}

/**
 * Brings the outbox schema and every cache schema up to date. Each migration
 * runs in its own transaction under an advisory lock, so several processes
 * may call this at once. A database migrated by newer code is rejected.
 */
export async function migrate(db: Kysely<any>, options: MigrateOptions = {}): Promise<MigrateResult> {
  const outboxSchema = assertIdentifier('outboxSchema', options.outboxSchema ?? DEFAULT_OUTBOX_SCHEMA);
  const requestedSchemas: unknown = options.cacheSchemas ?? ['public'];
  if (!Array.isArray(requestedSchemas) || requestedSchemas.length === 0) {
    throw new ValidationError('cacheSchemas', requestedSchemas, 'must be a non-empty array of schema names');
  }
  const cacheSchemas = Array.from(requestedSchemas, (schema: unknown, position) =>
    assertIdentifier(`cacheSchemas[${position}]`, schema),
  );
  const logger = validateLogger(options.logger);

  await db.transaction().execute(async (trx) => {
    await takeMigrationLock(trx, outboxSchema);
    await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(outboxSchema)}`.execute(trx);
    await sql`
      CREATE TABLE IF NOT EXISTS ${table(outboxSchema, MIGRATIONS_TABLE)} (
        target_schema text NOT NULL,
        scope text NOT NULL,
        version integer NOT NULL,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target_schema, scope, version)
      )
    `.execute(trx);
  });

  const targets: { schema: string; scope: MigrationScope }[] = [
    { schema: outboxSchema, scope: 'outbox' },
    ...[...new Set(cacheSchemas)].map((schema) => ({ schema, scope: 'cache' as const })),
  ];
  const applied: AppliedMigration[] = [];
  for (const target of targets) {
    if (target.scope === 'cache') await forgetDroppedCache(db, outboxSchema, target.schema, logger);
    for (const migration of MIGRATIONS.filter((m) => m.scope === target.scope)) {
      const ran = await applyMigration(db, outboxSchema, target.schema, migration, logger);
      if (ran) applied.push({ schema: target.schema, scope: target.scope, version: migration.version, name: migration.name });
    }
  }
  return { applied };
}

async function applyMigration(
  db: Kysely<any>,
  outboxSchema: string,
  targetSchema: string,
  migration: Migration,
  logger: Logger,
): Promise<boolean> {
  return db.transaction().execute(async (trx) => {
    await takeMigrationLock(trx, outboxSchema);
    const current = await currentVersion(trx, outboxSchema, targetSchema, migration.scope);
    if (current > LATEST_VERSIONS[migration.scope]) {
      throw new MigrationError(
        `The ${migration.scope} tables in schema "${targetSchema}" are at version ${current}, ` +
          `but this version of search-outbox knows versions up to ${LATEST_VERSIONS[migration.scope]}. ` +
          'The database was migrated by newer code; upgrade search-outbox before using this database.',
      );
    }
    if (current >= migration.version) return false;

    const started = Date.now();
    await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(targetSchema)}`.execute(trx);
    try {
      await migration.up(trx, targetSchema, logger);
    } catch (error) {
      throw new MigrationError(
        `Migration ${migration.scope} ${migration.version} (${migration.name}) failed in schema "${targetSchema}"; ` +
          'it was rolled back and no later migration ran',
        { cause: error },
      );
    }
    await sql`
      INSERT INTO ${table(outboxSchema, MIGRATIONS_TABLE)} (target_schema, scope, version, name)
      VALUES (${targetSchema}, ${migration.scope}, ${migration.version}, ${migration.name})
    `.execute(trx);
    logger.info('applied migration', {
      schema: targetSchema,
      scope: migration.scope,
      version: migration.version,
      name: migration.name,
      durationMs: Date.now() - started,
    });
    return true;
  });
}

/**
 * Deletes the migration records of a cache schema whose cache table is gone
 * (the schema was dropped, for example), so that its migrations run again.
 */
async function forgetDroppedCache(db: Kysely<any>, outboxSchema: string, schema: string, logger: Logger): Promise<void> {
  await db.transaction().execute(async (trx) => {
    await takeMigrationLock(trx, outboxSchema);
    const removed = await sql`
      DELETE FROM ${table(outboxSchema, MIGRATIONS_TABLE)}
      WHERE target_schema = ${schema} AND scope = 'cache'
        AND to_regclass(quote_ident(${schema}) || '.' || ${CACHE_TABLE}) IS NULL
    `.execute(trx);
    if (Number(removed.numAffectedRows ?? 0) > 0) {
      logger.warn('the cache table of a migrated schema is gone; migrating that schema again', { schema });
    }
  });
}

/**
 * Throws a MigrationError unless the outbox schema exists and is exactly at
 * the version this code expects, so a drainer never runs against a database
 * that is older or newer than its code.
 */
export async function assertMigrated(db: Kysely<any>, outboxSchema: string): Promise<void> {
  const exists = await sql<{ found: boolean }>`
    SELECT to_regclass(${`${quoteIdentifier(outboxSchema)}.${MIGRATIONS_TABLE}`}) IS NOT NULL AS found
  `.execute(db);
  if (exists.rows[0]?.found !== true) {
    throw new MigrationError(
      `Schema "${outboxSchema}" has no search-outbox migrations table; run \`search-outbox migrate\` or call migrate() first`,
    );
  }
  const version = await currentVersion(db, outboxSchema, outboxSchema, 'outbox');
  if (version !== LATEST_VERSIONS.outbox) {
    const advice = version > LATEST_VERSIONS.outbox ? 'upgrade search-outbox' : 'run migrations';
    throw new MigrationError(
      `Schema "${outboxSchema}" is at outbox version ${version}, but this code expects ${LATEST_VERSIONS.outbox}; ${advice}`,
    );
  }
}

async function currentVersion(
  executor: Kysely<any>,
  outboxSchema: string,
  targetSchema: string,
  scope: MigrationScope,
): Promise<number> {
  const result = await sql<{ version: number | null }>`
    SELECT max(version) AS version FROM ${table(outboxSchema, MIGRATIONS_TABLE)}
    WHERE target_schema = ${targetSchema} AND scope = ${scope}
  `.execute(executor);
  return result.rows[0]?.version ?? 0;
}

/** Serialises migrations of one outbox schema across processes until the transaction ends. */
async function takeMigrationLock(trx: Transaction<any>, outboxSchema: string): Promise<void> {
  await sql`SELECT pg_advisory_xact_lock(hashtextextended(${`search_outbox.migrate:${outboxSchema}`}, 0))`.execute(trx);
}

/**
 * Creates pg_trgm when it is missing and returns the schema that contains
 * it. Returns undefined when the extension cannot be created (not installed
 * on the server, or no privilege), so search falls back to the btree index
 * and sequential scans.
 */
async function ensureTrigramExtension(trx: Transaction<any>, logger: Logger): Promise<string | undefined> {
  const installed = await findExtensionSchema(trx);
  if (installed !== undefined) return installed;

  await sql`SAVEPOINT create_pg_trgm`.execute(trx);
  try {
    await sql`CREATE EXTENSION IF NOT EXISTS pg_trgm`.execute(trx);
    await sql`RELEASE SAVEPOINT create_pg_trgm`.execute(trx);
  } catch (error) {
    await sql`ROLLBACK TO SAVEPOINT create_pg_trgm`.execute(trx);
    // Another session may have created it between our check and our attempt.
    const createdMeanwhile = await findExtensionSchema(trx);
    if (createdMeanwhile !== undefined) return createdMeanwhile;
    logger.warn('pg_trgm is not available, so substring, suffix and regex searches scan the cache without an index', {
      error: error instanceof Error ? error.message : String(error),
    });
    return undefined;
  }
  return findExtensionSchema(trx);
}

async function findExtensionSchema(trx: Transaction<any>): Promise<string | undefined> {
  const result = await sql<{ schema: string }>`
    SELECT n.nspname AS schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_trgm'
  `.execute(trx);
  return result.rows[0]?.schema;
}

function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
