import { sql, type Kysely, type Transaction } from 'kysely';
import { selectKeyChunk } from './cache-rows.js';
import { validateInteger } from './drain.js';
import { errorMessage, SearchOutboxError, ValidationError } from './errors.js';
import { assertIdentifier, table } from './identifiers.js';
import type { IndexRegistry, ResolvedIndex } from './indexes.js';
import type { Logger } from './logger.js';
import { CACHE_TABLE } from './migrations.js';
import { insertMarks } from './marks.js';
import { lockObjects, replaceObjectsIsolated, type ObjectKey } from './replace-objects.js';

export interface RebuildOptions {
  /** Schema of the source tables and the cache. Default: `public`. */
  readonly schema?: string;
  /**
   * Object types to rebuild. Default: every declared type; cache rows of
   * types that are no longer declared are then removed too.
   */
  readonly objectTypes?: readonly string[];
  /** Objects rebuilt per transaction. Integer from 1 to 50000. Default: 1000. */
  readonly chunkSize?: number;
  /**
   * Start over even when an earlier rebuild of a type stopped halfway.
   * Default: false, so an interrupted rebuild resumes after its last chunk.
   */
  readonly restart?: boolean;
  /** Called after every chunk. */
  readonly onProgress?: (progress: RebuildProgress) => void;
  /** Stops the rebuild between chunks when aborted; a later rebuild resumes it. */
  readonly signal?: AbortSignal;
}

export interface RebuildProgress {
  readonly objectType: string;
  /** Objects of this type rebuilt so far, including those of an interrupted run that this one resumed. */
  readonly done: number;
  /** Objects of this type in the source table when this type started. */
  readonly total: number;
}

export interface RebuiltType {
  readonly objectType: string;
  /** Objects read from the source table. */
  readonly objects: number;
  /** Cache rows written by this run. */
  readonly rows: number;
  /** Cache rows removed because their object no longer exists. */
  readonly staleRowsRemoved: number;
  /**
   * Objects whose rebuild failed. They keep their old cache rows and are
   * marked in the outbox, so that the drain retries them and parks them as
   * dead after its attempt limit.
   */
  readonly failed: number;
  /** True when this run continued an interrupted rebuild. */
  readonly resumed: boolean;
}

export interface RebuildSummary {
  readonly schema: string;
  readonly types: readonly RebuiltType[];
  /** Cache rows removed because their object type is not declared (full rebuilds only). */
  readonly undeclaredRowsRemoved: number;
  /** True when the signal stopped the rebuild before it finished. */
  readonly aborted: boolean;
  readonly durationMs: number;
}

const PROGRESS_TABLE = 'rebuild_progress';

/**
 * Rebuilds the cache of whole object types from their source tables, chunk
 * by chunk. Each chunk replaces the rows of its objects in one transaction,
 * so a type never lacks rows while it is rebuilt, and each chunk records its
 * last key so that an interrupted rebuild resumes where it stopped.
 */
export async function rebuildCache(
  db: Kysely<any>,
  outboxSchema: string,
  registry: IndexRegistry,
  logger: Logger,
  options: RebuildOptions = {},
): Promise<RebuildSummary> {
  const started = Date.now();
  const schema = assertIdentifier('schema', options.schema ?? 'public');
  const chunkSize = validateInteger('chunkSize', options.chunkSize ?? 1000, 1, 50_000);
  const indexes = resolveTypes(registry, options.objectTypes);
  await assertCacheExists(db, schema);

  const types: RebuiltType[] = [];
  let aborted = false;
  for (const index of indexes) {
    if (options.signal?.aborted === true) {
      aborted = true;
      break;
    }
    const result = await rebuildType(db, outboxSchema, registry, schema, index, chunkSize, options, logger);
    if (result === undefined) {
      aborted = true;
      break;
    }
    types.push(result);
    logger.info('rebuilt object type', { schema, ...result });
  }

  let undeclaredRowsRemoved = 0;
  if (options.objectTypes === undefined && !aborted) {
    const removed = await sql`
      DELETE FROM ${table(schema, CACHE_TABLE)} WHERE object_type <> ALL(${registry.objectTypes}::text[])
    `.execute(db);
    undeclaredRowsRemoved = Number(removed.numAffectedRows ?? 0);
    if (undeclaredRowsRemoved > 0) {
      logger.info('removed cache rows of undeclared object types', { schema, rows: undeclaredRowsRemoved });
    }
  }
  return { schema, types, undeclaredRowsRemoved, aborted, durationMs: Date.now() - started };
}

/** Rebuilds one type; returns undefined when the signal stopped it halfway. */
async function rebuildType(
  db: Kysely<any>,
  outboxSchema: string,
  registry: IndexRegistry,
  schema: string,
  index: ResolvedIndex,
  chunkSize: number,
  options: RebuildOptions,
  logger: Logger,
): Promise<RebuiltType | undefined> {
  const progressTable = table(outboxSchema, PROGRESS_TABLE);
  const total = await countRows(db, schema, index);
  const start = await startProgress(db, outboxSchema, schema, index.objectType, options.restart === true);
  let lastKey = start.lastKey;
  let done = start.objects;
  let rows = 0;
  let failed = 0;

  for (;;) {
    if (options.signal?.aborted === true) return undefined;
    const chunk = await db.transaction().execute(async (trx) => {
      const keys = await selectKeyChunk(schema, index, lastKey, chunkSize).execute(trx);
      const objectKeys: ObjectKey[] = keys.rows.map((row) => ({
        schema,
        objectType: index.objectType,
        objectId: row.object_id,
      }));
      if (objectKeys.length === 0) return { objects: 0, rows: 0, failed: 0, lastKey };

      await lockObjects(trx, objectKeys);
      const counts = new Map<string, number>();
      const failures: { object: ObjectKey; error: unknown }[] = [];
      await replaceObjectsIsolated(trx, registry, schema, objectKeys, counts, failures);
      await handOverFailures(trx, outboxSchema, registry, schema, index, failures, logger);
      const chunkLastKey = objectKeys[objectKeys.length - 1]?.objectId ?? null;
      await sql`
        UPDATE ${progressTable}
        SET last_key = ${chunkLastKey}, objects = objects + ${objectKeys.length}, updated_at = now()
        WHERE target_schema = ${schema} AND object_type = ${index.objectType}
      `.execute(trx);
      let chunkRows = 0;
      for (const count of counts.values()) chunkRows += count;
      return { objects: objectKeys.length, rows: chunkRows, failed: failures.length, lastKey: chunkLastKey };
    });
    if (chunk.objects === 0) break;
    lastKey = chunk.lastKey;
    done += chunk.objects;
    rows += chunk.rows;
    failed += chunk.failed;
    options.onProgress?.({ objectType: index.objectType, done, total: Math.max(total, done) });
  }

  // Rows of objects that no longer exist. A drain that adds rows for an
  // object created meanwhile is safe: that object exists in this statement's
  // snapshot, or its rows are not visible to it.
  const stale = await sql`
    DELETE FROM ${table(schema, CACHE_TABLE)} AS c
    WHERE c.object_type = ${index.objectType}
      AND NOT EXISTS (
        SELECT 1 FROM ${table(schema, index.table)} AS t WHERE t.${sql.id(index.primaryKey)}::text = c.object_id
      )
  `.execute(db);
  await sql`
    UPDATE ${progressTable} SET finished_at = now(), updated_at = now()
    WHERE target_schema = ${schema} AND object_type = ${index.objectType}
  `.execute(db);

  return {
    objectType: index.objectType,
    objects: done,
    rows,
    staleRowsRemoved: Number(stale.numAffectedRows ?? 0),
    failed,
    resumed: start.resumed,
  };
}

/**
 * Marks the objects whose rebuild failed, in the chunk's transaction, and
 * logs each one. The drain then retries them with attempts and backoff, so
 * one bad object neither stops the rebuild nor goes unnoticed.
 */
async function handOverFailures(
  trx: Transaction<any>,
  outboxSchema: string,
  registry: IndexRegistry,
  schema: string,
  index: ResolvedIndex,
  failures: readonly { object: ObjectKey; error: unknown }[],
  logger: Logger,
): Promise<void> {
  if (failures.length === 0) return;
  const ids = failures.map((failure) => failure.object.objectId);
  await insertMarks(trx, outboxSchema, registry, index.objectType, ids, 'upsert', { schema });
  for (const { object, error } of failures) {
    logger.warn('object rebuild failed during a full rebuild; it keeps its old rows and was marked for the drain', {
      schema,
      objectType: object.objectType,
      objectId: object.objectId,
      error: errorMessage(error),
    });
  }
}

/** Continues an unfinished rebuild of the type, or records the start of a new one. */
async function startProgress(
  db: Kysely<any>,
  outboxSchema: string,
  schema: string,
  objectType: string,
  restart: boolean,
): Promise<{ lastKey: string | null; objects: number; resumed: boolean }> {
  const progressTable = table(outboxSchema, PROGRESS_TABLE);
  const existing = await sql<{ last_key: string | null; objects: string; finished_at: Date | null }>`
    SELECT last_key, objects, finished_at FROM ${progressTable}
    WHERE target_schema = ${schema} AND object_type = ${objectType}
  `.execute(db);
  const row = existing.rows[0];
  if (row !== undefined && row.finished_at === null && row.last_key !== null && !restart) {
    return { lastKey: row.last_key, objects: Number(row.objects), resumed: true };
  }
  await sql`
    INSERT INTO ${progressTable} (target_schema, object_type) VALUES (${schema}, ${objectType})
    ON CONFLICT (target_schema, object_type) DO UPDATE
    SET last_key = NULL, objects = 0, started_at = now(), updated_at = now(), finished_at = NULL
  `.execute(db);
  return { lastKey: null, objects: 0, resumed: false };
}

function resolveTypes(registry: IndexRegistry, objectTypes: readonly string[] | undefined): ResolvedIndex[] {
  if (objectTypes === undefined) return [...registry.all];
  if (!Array.isArray(objectTypes) || objectTypes.length === 0) {
    throw new ValidationError('objectTypes', objectTypes, 'must be a non-empty array of declared object types');
  }
  const unique = [...new Set(objectTypes)];
  return unique.map((objectType, position) => registry.get(objectType, `objectTypes[${position}]`));
}

async function countRows(db: Kysely<any>, schema: string, index: ResolvedIndex): Promise<number> {
  const result = await sql<{ count: string }>`SELECT count(*) AS count FROM ${table(schema, index.table)}`.execute(db);
  return Number(result.rows[0]?.count ?? 0);
}

export async function assertCacheExists(db: Kysely<any>, schema: string): Promise<void> {
  const result = await sql<{ present: boolean }>`
    SELECT to_regclass(quote_ident(${schema}) || '.' || ${CACHE_TABLE}) IS NOT NULL AS present
  `.execute(db);
  if (result.rows[0]?.present !== true) {
    throw new SearchOutboxError(
      `Schema "${schema}" has no ${CACHE_TABLE} table; run migrations with this schema among the cache schemas`,
    );
  }
}
