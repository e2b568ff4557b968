import { sql, type Kysely, type Transaction } from 'kysely';
import { ValidationError, errorMessage, isOutOfSharedMemory } from './errors.js';
import { table } from './identifiers.js';
import type { IndexRegistry } from './indexes.js';
import type { Logger } from './logger.js';
import { CACHE_TABLE, OUTBOX_TABLE } from './migrations.js';
import { lockObjects, objectKeyString, replaceObjectsIsolated, type ObjectKey } from './replace-objects.js';

/** Settings of failure handling, fixed for one outbox instance. */
export interface RetrySettings {
  /** Attempts before an object's rows are parked as dead. Integer from 1 to 100. Default: 5. */
  readonly maxAttempts?: number;
  /** Delay before the second attempt, in milliseconds; it doubles with each attempt. Default: 10000. */
  readonly backoffBaseMs?: number;
  /** Maximum delay between attempts, in milliseconds. Default: 900000 (15 minutes). */
  readonly backoffMaxMs?: number;
}

export interface DrainOptions {
  /** Outbox rows claimed per batch. Integer from 1 to 10000. Default: 500. */
  readonly batchSize?: number;
  /**
   * Stop starting batches after this many milliseconds. A batch starts only
   * when the slowest batch so far, plus half again, fits in what is left.
   * Default: no limit.
   */
  readonly timeBudgetMs?: number;
  /**
   * Stop starting batches near this moment, in milliseconds since the epoch,
   * under the same rule. Keep a margin for the work after the drain, such as
   * a Lambda function's response. Default: none.
   */
  readonly deadline?: number;
  /** Stop after this many batches. Default: no limit. */
  readonly maxBatches?: number;
  /** Drain only the rows written by these transactions (`pg_current_xact_id()` as text). Default: all rows. */
  readonly transactionIds?: readonly string[];
  /** Called after every batch with the running totals. */
  readonly onProgress?: (progress: DrainProgress) => void;
  /** Stops the drain between batches when aborted. */
  readonly signal?: AbortSignal;
}

/** Running totals of a drain. */
export interface DrainProgress {
  /** Batches run. */
  readonly batches: number;
  /** Outbox rows claimed. */
  readonly claimed: number;
  /** Distinct objects claimed; fewer than `claimed` when marks coalesced. */
  readonly objects: number;
  /** Objects whose cache rows were rebuilt and that have at least one row. */
  readonly rebuilt: number;
  /** Objects left with no cache rows: deleted, no longer matching their index, or with no non-empty field. */
  readonly removed: number;
  /** Objects whose rebuild failed; their rows wait for another attempt or became dead. */
  readonly failed: number;
  /** Objects whose rows were parked as dead in this drain. */
  readonly dead: number;
  /** Objects whose rows were retired without a rebuild: their schema, table or object type is gone. */
  readonly skipped: number;
  /** Dead outbox rows deleted because a later rebuild of their object succeeded. */
  readonly deadRetired: number;
}

export interface DrainSummary extends DrainProgress {
  /** Pending outbox rows left when the drain stopped, including rows waiting for a retry. */
  readonly remaining: number;
  readonly durationMs: number;
  /** The reason the drain stopped. */
  readonly stoppedBy: 'empty' | 'deadline' | 'maxBatches' | 'aborted';
}

interface ClaimedRow {
  readonly id: string;
  /** True for rows of the batch itself, false for other pending rows of the same objects. */
  readonly in_batch: boolean;
  readonly target_schema: string;
  readonly object_type: string;
  readonly object_id: string;
}

interface ClaimedObject extends ObjectKey {
  readonly outboxIds: string[];
}

interface BatchResult {
  readonly claimed: number;
  /** Rows claimed by the batch query itself, without the other rows of its objects. */
  readonly batchRows: number;
  readonly objects: number;
  readonly rebuilt: number;
  readonly removed: number;
  readonly failed: number;
  readonly dead: number;
  readonly skipped: number;
  readonly deadRetired: number;
}

export const DEFAULT_BATCH_SIZE = 500;
const MAX_BATCH_SIZE = 10_000;
/** Bound on the extra rows of the batch's objects claimed with a batch, as a multiple of the batch size. */
const SAME_OBJECT_CLAIM_FACTOR = 4;

export class Drainer {
  readonly #db: Kysely<any>;
  readonly #outboxSchema: string;
  readonly #registry: IndexRegistry;
  readonly #logger: Logger;
  readonly #maxAttempts: number;
  readonly #backoffBaseMs: number;
  readonly #backoffMaxMs: number;

  constructor(db: Kysely<any>, outboxSchema: string, registry: IndexRegistry, logger: Logger, retry: RetrySettings) {
    this.#db = db;
    this.#outboxSchema = outboxSchema;
    this.#registry = registry;
    this.#logger = logger;
    this.#maxAttempts = validateInteger('maxAttempts', retry.maxAttempts ?? 5, 1, 100);
    this.#backoffBaseMs = validateInteger('backoffBaseMs', retry.backoffBaseMs ?? 10_000, 0, 86_400_000);
    this.#backoffMaxMs = validateInteger('backoffMaxMs', retry.backoffMaxMs ?? 900_000, 0, 604_800_000);
  }

  /**
   * Claims pending outbox rows batch by batch, rebuilds the cache rows of the
   * objects they name and retires exactly the claimed rows, until no row is
   * left, the time budget runs low or `maxBatches` is reached.
   */
  async drain(options: DrainOptions = {}): Promise<DrainSummary> {
    const batchSize = validateInteger('batchSize', options.batchSize ?? DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE);
    const maxBatches =
      options.maxBatches === undefined ? Infinity : validateInteger('maxBatches', options.maxBatches, 1, 1e9);
    const started = Date.now();
    const deadline = resolveDeadline(started, options);
    const transactionIds = validateTransactionIds(options.transactionIds);
    if (options.onProgress !== undefined && typeof options.onProgress !== 'function') {
      throw new ValidationError('onProgress', options.onProgress, 'must be a function');
    }
    if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
      throw new ValidationError('signal', options.signal, 'must be an AbortSignal');
    }

    const totals = { batches: 0, claimed: 0, objects: 0, rebuilt: 0, removed: 0, failed: 0, dead: 0, skipped: 0, deadRetired: 0 };
    let slowestBatchMs = 0;
    let currentBatchSize = batchSize;
    let stoppedBy: DrainSummary['stoppedBy'] = 'empty';

    for (;;) {
      if (options.signal?.aborted === true) {
        stoppedBy = 'aborted';
        break;
      }
      if (totals.batches >= maxBatches) {
        stoppedBy = 'maxBatches';
        break;
      }
      // Start a batch only when the slowest one so far, plus half again,
      // would still finish before the deadline.
      if (Date.now() + slowestBatchMs * 1.5 >= deadline) {
        stoppedBy = 'deadline';
        break;
      }

      const batchStarted = Date.now();
      let batch: BatchResult;
      try {
        batch = await this.#runBatch(currentBatchSize, transactionIds);
      } catch (error) {
        // Each object of a batch holds an advisory lock until the commit, and
        // PostgreSQL's lock table is shared by all sessions, so a large batch
        // among concurrent drainers can exhaust it. A smaller batch fits.
        if (isOutOfSharedMemory(error) && currentBatchSize > 1) {
          const smaller = Math.floor(currentBatchSize / 2);
          this.#logger.warn('drain batch ran out of shared memory for its object locks and was rolled back; retrying with a smaller batch', {
            batchSize: currentBatchSize,
            nextBatchSize: smaller,
            error: errorMessage(error),
          });
          currentBatchSize = smaller;
          continue;
        }
        // The batch's transaction rolled back as a whole (a lost connection,
        // a failed COMMIT, a timeout), so its rows are still pending with
        // their attempt counts unchanged, and the next drain claims them again.
        this.#logger.error('drain batch failed and was rolled back, so its outbox rows stay pending', {
          batch: totals.batches + 1,
          batchSize: currentBatchSize,
          drainedSoFar: totals.claimed,
          error: errorMessage(error),
        });
        throw error;
      }
      slowestBatchMs = Math.max(slowestBatchMs, Date.now() - batchStarted);
      if (batch.claimed === 0) break;

      totals.batches += 1;
      totals.claimed += batch.claimed;
      totals.objects += batch.objects;
      totals.rebuilt += batch.rebuilt;
      totals.removed += batch.removed;
      totals.failed += batch.failed;
      totals.dead += batch.dead;
      totals.skipped += batch.skipped;
      totals.deadRetired += batch.deadRetired;
      this.#logger.debug('drained batch', { ...batch, durationMs: Date.now() - batchStarted });
      options.onProgress?.({ ...totals });
      if (batch.batchRows < currentBatchSize) break;
    }

    const remaining = await this.#countPending(transactionIds);
    const summary: DrainSummary = { ...totals, remaining, durationMs: Date.now() - started, stoppedBy };
    if (summary.claimed > 0 || summary.remaining > 0) this.#logger.info('drain finished', { ...summary });
    return summary;
  }

  async #runBatch(batchSize: number, transactionIds: readonly string[] | null): Promise<BatchResult> {
    return this.#db.transaction().execute(async (trx) => {
      const rows = await this.#claim(trx, batchSize, transactionIds);
      if (rows.length === 0) return emptyBatch();
      const batchRows = rows.filter((row) => row.in_batch).length;

      const objects = groupByObject(rows);
      const { runnable, skipped } = await this.#partitionRunnable(trx, objects);
      await lockObjects(trx, runnable);

      const rebuiltKeys = new Map<string, number>();
      const failures: { object: ClaimedObject; error: unknown }[] = [];
      for (const [schema, schemaObjects] of groupBySchema(runnable)) {
        await replaceObjectsIsolated(trx, this.#registry, schema, schemaObjects, rebuiltKeys, failures);
      }
      const deadCount = await this.#recordFailures(trx, failures);

      const failedIds = new Set(failures.flatMap((failure) => failure.object.outboxIds));
      const retiredIds = rows.map((row) => row.id).filter((id) => !failedIds.has(id));
      const failedObjects = new Set(failures.map((failure) => failure.object));
      const succeeded = runnable.filter((object) => !failedObjects.has(object));
      const deadRetired = await this.#retire(trx, retiredIds, succeeded);

      const rebuilt = succeeded.filter((object) => rebuiltKeys.has(objectKeyString(object))).length;
      return {
        claimed: rows.length,
        batchRows,
        deadRetired,
        objects: objects.length,
        rebuilt,
        removed: succeeded.length - rebuilt,
        failed: failures.length,
        dead: deadCount,
        skipped: skipped.length,
      };
    });
  }

  /**
   * Deletes the claimed rows that are done, and the dead rows of the objects
   * rebuilt in this batch. A dead row records a change that failed to
   * drain. A successful rebuild read the object after that change, so the
   * row has nothing left to do. A dead row that another transaction has
   * locked (a concurrent retry or claim) is skipped rather than waited for,
   * because that transaction may be waiting for this batch's object locks.
   * Returns the number of dead rows deleted.
   */
  async #retire(trx: Transaction<any>, retiredIds: readonly string[], rebuilt: readonly ClaimedObject[]): Promise<number> {
    const outbox = table(this.#outboxSchema, OUTBOX_TABLE);
    const result = await sql<{ dead: string }>`
      WITH retired AS (
        DELETE FROM ${outbox}
        WHERE id = ANY(${retiredIds}::bigint[])
           OR id = ANY(ARRAY(
                SELECT d.id FROM ${outbox} AS d
                JOIN unnest(${rebuilt.map((o) => o.schema)}::text[], ${rebuilt.map((o) => o.objectType)}::text[],
                            ${rebuilt.map((o) => o.objectId)}::text[]) AS k(target_schema, object_type, object_id)
                  ON d.object_type = k.object_type AND d.object_id = k.object_id AND d.target_schema = k.target_schema
                WHERE d.state = 'dead'
                FOR UPDATE OF d SKIP LOCKED))
        RETURNING state
      )
      SELECT count(*) FILTER (WHERE state = 'dead') AS dead FROM retired
    `.execute(trx);
    return Number(result.rows[0]?.dead ?? 0);
  }

  async #claim(
    trx: Transaction<any>,
    batchSize: number,
    transactionIds: readonly string[] | null,
  ): Promise<ClaimedRow[]> {
    // SKIP LOCKED lets concurrent drainers claim disjoint rows without waiting;
    // rows of transactions still in progress are invisible and wait for a later drain.
    const onlyTransactions =
      transactionIds === null ? sql`TRUE` : sql`transaction_id = ANY(${transactionIds}::xid8[])`;
    // The second step also claims the other pending rows of the batch's
    // objects, however old, so that every mark of an object coalesces into
    // one rebuild rather than one per batch it happens to fall into. It
    // matches types, ids and schemas as separate arrays, because the
    // (object_type, object_id) index serves those. A row-value IN over the
    // batch made the planner scan the whole outbox for every batch. The
    // arrays may also match an id of another type or schema in the batch,
    // and such a row is simply drained too.
    const outbox = table(this.#outboxSchema, OUTBOX_TABLE);
    const result = await sql<ClaimedRow>`
      WITH batch AS (
        SELECT id, target_schema, object_type, object_id
        FROM ${outbox}
        WHERE state = 'pending' AND available_at <= now() AND ${onlyTransactions}
        ORDER BY id
        LIMIT ${batchSize}
        FOR UPDATE SKIP LOCKED
      ), same_objects AS (
        SELECT o.id, o.target_schema, o.object_type, o.object_id
        FROM ${outbox} AS o
        WHERE o.state = 'pending' AND o.available_at <= now()
          AND o.object_type = ANY(ARRAY(SELECT DISTINCT object_type FROM batch))
          AND o.object_id = ANY(ARRAY(SELECT DISTINCT object_id FROM batch))
          AND o.target_schema = ANY(ARRAY(SELECT DISTINCT target_schema FROM batch))
          AND o.id <> ALL(ARRAY(SELECT id FROM batch))
        LIMIT ${batchSize * SAME_OBJECT_CLAIM_FACTOR}
        FOR UPDATE OF o SKIP LOCKED
      )
      SELECT id, target_schema, object_type, object_id, true AS in_batch FROM batch
      UNION ALL
      SELECT id, target_schema, object_type, object_id, false AS in_batch FROM same_objects
    `.execute(trx);
    return result.rows;
  }

  /**
   * Splits claimed objects into those that can be rebuilt and those whose
   * object type is no longer declared or whose schema, cache table or source
   * table is gone. The latter are retired with a log line, because no later
   * drain could rebuild them either.
   */
  async #partitionRunnable(
    trx: Transaction<any>,
    objects: readonly ClaimedObject[],
  ): Promise<{ runnable: ClaimedObject[]; skipped: ClaimedObject[] }> {
    const relations = new Map<string, { schema: string; name: string }>();
    for (const object of objects) {
      const index = this.#registry.find(object.objectType);
      relations.set(`${object.schema}.${CACHE_TABLE}`, { schema: object.schema, name: CACHE_TABLE });
      if (index !== undefined) relations.set(`${object.schema}.${index.table}`, { schema: object.schema, name: index.table });
    }
    const list = [...relations.values()];
    const found = await sql<{ schema: string; name: string; present: boolean }>`
      SELECT s AS schema, n AS name, to_regclass(quote_ident(s) || '.' || quote_ident(n)) IS NOT NULL AS present
      FROM unnest(${list.map((r) => r.schema)}::text[], ${list.map((r) => r.name)}::text[]) AS u(s, n)
    `.execute(trx);
    const present = new Set(found.rows.filter((row) => row.present).map((row) => `${row.schema}.${row.name}`));

    const runnable: ClaimedObject[] = [];
    const skipped: ClaimedObject[] = [];
    for (const object of objects) {
      const reason = this.#skipReason(object, present);
      if (reason === undefined) {
        runnable.push(object);
        continue;
      }
      skipped.push(object);
      this.#logger.warn(`retired outbox rows without a rebuild: ${reason}`, {
        schema: object.schema,
        objectType: object.objectType,
        objectId: object.objectId,
        outboxIds: object.outboxIds,
      });
    }
    return { runnable, skipped };
  }

  #skipReason(object: ClaimedObject, present: ReadonlySet<string>): string | undefined {
    const index = this.#registry.find(object.objectType);
    if (index === undefined) return `object type "${object.objectType}" is not declared`;
    if (!present.has(`${object.schema}.${CACHE_TABLE}`)) {
      return `schema "${object.schema}" has no table ${CACHE_TABLE} (schema dropped or not migrated)`;
    }
    if (!present.has(`${object.schema}.${index.table}`)) {
      return `source table "${object.schema}.${index.table}" does not exist`;
    }
    return undefined;
  }

  /** Counts an attempt on each failed object's rows, schedules the retry, and parks rows out of attempts as dead. */
  async #recordFailures(
    trx: Transaction<any>,
    failures: readonly { object: ClaimedObject; error: unknown }[],
  ): Promise<number> {
    if (failures.length === 0) return 0;
    const ids: string[] = [];
    const messages: string[] = [];
    for (const { object, error } of failures) {
      for (const id of object.outboxIds) {
        ids.push(id);
        messages.push(errorMessage(error).slice(0, 2000));
      }
    }
    const result = await sql<{ object_type: string; object_id: string; target_schema: string; state: string; attempts: number }>`
      UPDATE ${table(this.#outboxSchema, OUTBOX_TABLE)} AS o
      SET attempts = o.attempts + 1,
          last_error = f.message,
          state = CASE WHEN o.attempts + 1 >= ${this.#maxAttempts}::int THEN 'dead' ELSE 'pending' END,
          available_at = now() + make_interval(secs => least(${this.#backoffMaxMs}::float8,
                           ${this.#backoffBaseMs}::float8 * power(2, o.attempts)) / 1000.0)
      FROM unnest(${ids}::bigint[], ${messages}::text[]) AS f(id, message)
      WHERE o.id = f.id
      RETURNING o.target_schema, o.object_type, o.object_id, o.state, o.attempts
    `.execute(trx);

    const deadObjects = new Set<string>();
    for (const row of result.rows) {
      if (row.state === 'dead') {
        deadObjects.add(objectKeyString({ schema: row.target_schema, objectType: row.object_type, objectId: row.object_id }));
      }
    }
    for (const { object, error } of failures) {
      const dead = deadObjects.has(objectKeyString(object));
      const attributes = {
        schema: object.schema,
        objectType: object.objectType,
        objectId: object.objectId,
        error: errorMessage(error),
      };
      if (dead) this.#logger.error('object rebuild failed; its outbox rows are dead until retried', attributes);
      else this.#logger.warn('object rebuild failed; it will be retried', attributes);
    }
    return deadObjects.size;
  }

  async #countPending(transactionIds: readonly string[] | null): Promise<number> {
    const onlyTransactions =
      transactionIds === null ? sql`TRUE` : sql`transaction_id = ANY(${transactionIds}::xid8[])`;
    const result = await sql<{ count: string }>`
      SELECT count(*) AS count FROM ${table(this.#outboxSchema, OUTBOX_TABLE)}
      WHERE state = 'pending' AND ${onlyTransactions}
    `.execute(this.#db);
    return Number(result.rows[0]?.count ?? 0);
  }
}

function emptyBatch(): BatchResult {
  return { claimed: 0, batchRows: 0, objects: 0, rebuilt: 0, removed: 0, failed: 0, dead: 0, skipped: 0, deadRetired: 0 };
}

/** Coalesces claimed rows across transactions: one entry per object, holding all its row ids. */
function groupByObject(rows: readonly ClaimedRow[]): ClaimedObject[] {
  const objects = new Map<string, ClaimedObject>();
  for (const row of rows) {
    const key = { schema: row.target_schema, objectType: row.object_type, objectId: row.object_id };
    const keyString = objectKeyString(key);
    const existing = objects.get(keyString);
    if (existing === undefined) objects.set(keyString, { ...key, outboxIds: [row.id] });
    else existing.outboxIds.push(row.id);
  }
  return [...objects.values()];
}

function groupBySchema(objects: readonly ClaimedObject[]): Map<string, ClaimedObject[]> {
  const groups = new Map<string, ClaimedObject[]>();
  for (const object of objects) {
    const group = groups.get(object.schema) ?? [];
    group.push(object);
    groups.set(object.schema, group);
  }
  return groups;
}

function resolveDeadline(started: number, options: DrainOptions): number {
  let deadline = Infinity;
  if (options.timeBudgetMs !== undefined) {
    deadline = started + validateInteger('timeBudgetMs', options.timeBudgetMs, 0, 86_400_000);
  }
  if (options.deadline !== undefined) {
    if (!Number.isFinite(options.deadline)) {
      throw new ValidationError('deadline', options.deadline, 'must be a finite number of milliseconds since the epoch');
    }
    deadline = Math.min(deadline, options.deadline);
  }
  return deadline;
}

const TRANSACTION_ID_PATTERN = /^\d{1,20}$/;

function validateTransactionIds(ids: readonly string[] | undefined): readonly string[] | null {
  if (ids === undefined) return null;
  if (!Array.isArray(ids)) throw new ValidationError('transactionIds', ids, 'must be an array of transaction ids');
  ids.forEach((id, position) => {
    if (typeof id !== 'string' || !TRANSACTION_ID_PATTERN.test(id)) {
      throw new ValidationError(`transactionIds[${position}]`, id, 'must be a transaction id of 1 to 20 digits');
    }
  });
  return ids;
}

export function validateInteger(path: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ValidationError(path, value, `must be an integer from ${min} to ${max}`);
  }
  return value;
}
