import { createHash, randomUUID } from 'node:crypto';
import { sql, type Kysely, type Transaction } from 'kysely';
import { selectKeyChunk } from './cache-rows.js';
import { validateInteger } from './drain.js';
import { errorMessage, isOutOfSharedMemory, SearchOutboxError, ValidationError } from './errors.js';
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
   * Default: false, so a rebuild of the same types with the same
   * declarations resumes an interrupted one: it skips the types that run
   * had finished and continues the unfinished type after its last chunk.
   * Any other rebuild starts over and stops the interrupted run.
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
  /**
   * True when an interrupted rebuild of the same types had already finished
   * this type, so this run skipped it; `objects` is then that run's count.
   */
  readonly skipped: boolean;
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

  const run = await startRun(db, outboxSchema, schema, indexes, options.restart === true);
  if (run.resumed) logger.info('resuming an interrupted rebuild', { schema, runId: run.id, finishedTypes: [...run.finished.keys()] });

  const types: RebuiltType[] = [];
  let aborted = false;
  for (const index of indexes) {
    if (options.signal?.aborted === true) {
      aborted = true;
      break;
    }
    const finishedObjects = run.finished.get(index.objectType);
    if (finishedObjects !== undefined) {
      types.push({
        objectType: index.objectType,
        objects: finishedObjects,
        rows: 0,
        staleRowsRemoved: 0,
        failed: 0,
        resumed: true,
        skipped: true,
      });
      continue;
    }
    const result = await rebuildType(db, outboxSchema, registry, schema, index, chunkSize, run.id, options, logger);
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
  runId: string,
  options: RebuildOptions,
  logger: Logger,
): Promise<RebuiltType | undefined> {
  const progressTable = table(outboxSchema, PROGRESS_TABLE);
  const total = await countRows(db, schema, index);
  const start = await readProgress(db, outboxSchema, schema, index.objectType);
  let lastKey = start.lastKey;
  let done = start.objects;
  let rows = 0;
  let failed = 0;
  let currentChunkSize = chunkSize;

  for (;;) {
    if (options.signal?.aborted === true) return undefined;
    let chunk: { objects: number; rows: number; failed: number; lastKey: string | null };
    try {
      chunk = await rebuildChunk(db, outboxSchema, registry, schema, index, lastKey, currentChunkSize, runId, logger);
    } catch (error) {
      if (!isOutOfSharedMemory(error) || currentChunkSize === 1) throw error;
      const smaller = Math.floor(currentChunkSize / 2);
      logger.warn('rebuild chunk ran out of shared memory for its object locks and was rolled back; retrying with a smaller chunk', {
        schema,
        objectType: index.objectType,
        chunkSize: currentChunkSize,
        nextChunkSize: smaller,
        error: errorMessage(error),
      });
      currentChunkSize = smaller;
      continue;
    }
    if (chunk.objects === 0) break;
    lastKey = chunk.lastKey;
    done += chunk.objects;
    rows += chunk.rows;
    failed += chunk.failed;
    options.onProgress?.({ objectType: index.objectType, done, total: Math.max(total, done) });
  }

  const staleRowsRemoved = await removeStaleRows(db, schema, index, currentChunkSize, logger);
  await sql`
    UPDATE ${progressTable} SET finished_at = now(), updated_at = now()
    WHERE target_schema = ${schema} AND object_type = ${index.objectType} AND run_id = ${runId}
  `.execute(db);

  return {
    objectType: index.objectType,
    objects: done,
    rows,
    staleRowsRemoved,
    failed,
    resumed: start.lastKey !== null,
    skipped: false,
  };
}

/** Rebuilds the objects after `lastKey`, at most `chunkSize` of them, in one transaction that also records the progress. */
async function rebuildChunk(
  db: Kysely<any>,
  outboxSchema: string,
  registry: IndexRegistry,
  schema: string,
  index: ResolvedIndex,
  lastKey: string | null,
  chunkSize: number,
  runId: string,
  logger: Logger,
): Promise<{ objects: number; rows: number; failed: number; lastKey: string | null }> {
  return db.transaction().execute(async (trx) => {
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
    const recorded = await sql`
      UPDATE ${table(outboxSchema, PROGRESS_TABLE)}
      SET last_key = ${chunkLastKey}, objects = objects + ${objectKeys.length}, updated_at = now()
      WHERE target_schema = ${schema} AND object_type = ${index.objectType} AND run_id = ${runId}
    `.execute(trx);
    if (Number(recorded.numAffectedRows ?? 0) === 0) {
      // Rolls the chunk back: the run that took over rebuilds these objects.
      throw new SearchOutboxError(
        `Rebuild of ${index.objectType} in schema "${schema}" stopped: another rebuild run took over its progress ` +
          '(a rebuild with restart, or of other types or declarations); that run continues it',
      );
    }
    let chunkRows = 0;
    for (const count of counts.values()) chunkRows += count;
    return { objects: objectKeys.length, rows: chunkRows, failed: failures.length, lastKey: chunkLastKey };
  });
}

/**
 * Removes the cache rows of objects that no longer exist, at most `chunkSize`
 * objects per transaction. It takes the object locks first, like the drain,
 * so that a drain deleting rows of the same objects waits instead of
 * deadlocking, and it checks again under the locks that each object is
 * still gone. A batch whose locks do not fit in the lock table is retried
 * with half the size. Returns the number of rows removed.
 */
async function removeStaleRows(
  db: Kysely<any>,
  schema: string,
  index: ResolvedIndex,
  chunkSize: number,
  logger: Logger,
): Promise<number> {
  const cache = table(schema, CACHE_TABLE);
  const source = table(schema, index.table);
  const primaryKey = sql.id(index.primaryKey);
  let removed = 0;
  let batchSize = chunkSize;
  // Null before the first batch, so that an empty text key is not skipped.
  let afterId: string | null = null;
  for (;;) {
    let batch: { ids: string[]; rows: number };
    try {
      batch = await db.transaction().execute(async (trx) => {
        const stale = await sql<{ object_id: string }>`
          SELECT DISTINCT c.object_id FROM ${cache} AS c
          WHERE c.object_type = ${index.objectType}
            AND (${afterId}::text IS NULL OR c.object_id > ${afterId}::text)
            AND NOT EXISTS (SELECT 1 FROM ${source} AS t WHERE t.${primaryKey}::text = c.object_id)
          ORDER BY c.object_id
          LIMIT ${batchSize}
        `.execute(trx);
        const ids = stale.rows.map((row) => row.object_id);
        if (ids.length === 0) return { ids, rows: 0 };
        await lockObjects(
          trx,
          ids.map((objectId) => ({ schema, objectType: index.objectType, objectId })),
        );
        const deleted = await sql`
          DELETE FROM ${cache} AS c
          WHERE c.object_type = ${index.objectType} AND c.object_id = ANY(${ids}::text[])
            AND NOT EXISTS (SELECT 1 FROM ${source} AS t WHERE t.${primaryKey}::text = c.object_id)
        `.execute(trx);
        return { ids, rows: Number(deleted.numAffectedRows ?? 0) };
      });
    } catch (error) {
      if (!isOutOfSharedMemory(error) || batchSize === 1) throw error;
      const smaller = Math.floor(batchSize / 2);
      logger.warn('stale-row removal ran out of shared memory for its object locks and was rolled back; retrying with a smaller batch', {
        schema,
        objectType: index.objectType,
        batchSize,
        nextBatchSize: smaller,
        error: errorMessage(error),
      });
      batchSize = smaller;
      continue;
    }
    removed += batch.rows;
    const last = batch.ids[batch.ids.length - 1];
    if (last === undefined || batch.ids.length < batchSize) return removed;
    afterId = last;
  }
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

interface RebuildRun {
  readonly id: string;
  /** True when this run continues an interrupted run of the same types. */
  readonly resumed: boolean;
  /** Types that the interrupted run finished, with their object counts. */
  readonly finished: ReadonlyMap<string, number>;
}

/**
 * Continues an interrupted rebuild of the same types, with the same
 * declarations, in the same schema, or starts a new run. A new run takes
 * over the progress row of every type and starts each from the beginning,
 * and a run that was taken over stops at its next chunk.
 */
async function startRun(
  db: Kysely<any>,
  outboxSchema: string,
  schema: string,
  indexes: readonly ResolvedIndex[],
  restart: boolean,
): Promise<RebuildRun> {
  const progressTable = table(outboxSchema, PROGRESS_TABLE);
  // A changed declaration changes the key, because rows rebuilt under the
  // old one must be rebuilt again.
  const runKey = indexes
    .map((index) => `${index.objectType}:${createHash('sha256').update(JSON.stringify(index)).digest('hex').slice(0, 16)}`)
    .sort()
    .join(',');
  if (!restart) {
    const rows = await sql<{ run_id: string; object_type: string; objects: string; finished_at: Date | null }>`
      SELECT run_id, object_type, objects, finished_at FROM ${progressTable}
      WHERE target_schema = ${schema} AND run_id = (
        SELECT run_id FROM ${progressTable}
        WHERE target_schema = ${schema} AND run_key = ${runKey} AND finished_at IS NULL AND run_id IS NOT NULL
        ORDER BY updated_at DESC
        LIMIT 1
      )
    `.execute(db);
    const first = rows.rows[0];
    if (first !== undefined) {
      const finished = new Map<string, number>();
      for (const row of rows.rows) if (row.finished_at !== null) finished.set(row.object_type, Number(row.objects));
      return { id: first.run_id, resumed: true, finished };
    }
  }

  const id = randomUUID();
  await sql`
    INSERT INTO ${progressTable} (target_schema, object_type, run_key, run_id)
    SELECT ${schema}, object_type, ${runKey}, ${id} FROM unnest(${indexes.map((index) => index.objectType)}::text[]) AS object_type
    ON CONFLICT (target_schema, object_type) DO UPDATE
    SET run_key = EXCLUDED.run_key, run_id = EXCLUDED.run_id, last_key = NULL, objects = 0,
        started_at = now(), updated_at = now(), finished_at = NULL
  `.execute(db);
  return { id, resumed: false, finished: new Map() };
}

/** Reads the type's progress: its last key (null to start from the beginning) and the objects done. */
async function readProgress(
  db: Kysely<any>,
  outboxSchema: string,
  schema: string,
  objectType: string,
): Promise<{ lastKey: string | null; objects: number }> {
  const result = await sql<{ last_key: string | null; objects: string }>`
    SELECT last_key, objects FROM ${table(outboxSchema, PROGRESS_TABLE)}
    WHERE target_schema = ${schema} AND object_type = ${objectType}
  `.execute(db);
  const row = result.rows[0];
  return { lastKey: row?.last_key ?? null, objects: Number(row?.objects ?? 0) };
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
