import { sql, type Kysely } from 'kysely';
import { ValidationError } from './errors.js';
import { table } from './identifiers.js';
import type { IndexRegistry } from './indexes.js';
import { normalizeIds } from './marks.js';
import { OUTBOX_TABLE } from './migrations.js';

export interface TypeStatus {
  readonly objectType: string;
  /** Outbox rows waiting for a drain, including rows waiting for a retry. */
  readonly pending: number;
  /** Pending rows that failed at least once. */
  readonly failed: number;
  /** Rows parked after their last attempt; `retry` makes them pending again. */
  readonly dead: number;
  /** Seconds since the oldest pending row was marked, or null when none is pending. */
  readonly oldestPendingAgeSeconds: number | null;
}

export interface OutboxStatus extends Omit<TypeStatus, 'objectType'> {
  readonly byType: readonly TypeStatus[];
}

/** Reads the outbox lag in one statement: pending, failed and dead rows and the oldest pending age, per type. */
export async function readStatus(db: Kysely<any>, outboxSchema: string): Promise<OutboxStatus> {
  const result = await sql<{
    object_type: string;
    pending: string;
    failed: string;
    dead: string;
    oldest_pending_age: number | null;
  }>`
    SELECT object_type,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'pending' AND attempts > 0) AS failed,
           count(*) FILTER (WHERE state = 'dead') AS dead,
           extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE state = 'pending'))::float8
             AS oldest_pending_age
    FROM ${table(outboxSchema, OUTBOX_TABLE)}
    GROUP BY object_type
    ORDER BY object_type
  `.execute(db);

  const byType: TypeStatus[] = result.rows.map((row) => ({
    objectType: row.object_type,
    pending: Number(row.pending),
    failed: Number(row.failed),
    dead: Number(row.dead),
    oldestPendingAgeSeconds: row.oldest_pending_age === null ? null : roundSeconds(row.oldest_pending_age),
  }));
  const ages = byType.map((type) => type.oldestPendingAgeSeconds).filter((age): age is number => age !== null);
  return {
    pending: sum(byType.map((type) => type.pending)),
    failed: sum(byType.map((type) => type.failed)),
    dead: sum(byType.map((type) => type.dead)),
    oldestPendingAgeSeconds: ages.length === 0 ? null : Math.max(...ages),
    byType,
  };
}

export interface RetryOptions {
  /** Only dead rows of this declared object type. Default: every type. */
  readonly objectType?: string;
  /** Only dead rows of these object ids; requires `objectType`. Default: every id. */
  readonly objectIds?: readonly (string | number | bigint)[];
}

export interface RetryResult {
  /** Dead outbox rows made pending again. */
  readonly retried: number;
}

/** Makes dead outbox rows pending again with a fresh attempt count, so the next drain picks them up. */
export async function retryDead(
  db: Kysely<any>,
  outboxSchema: string,
  registry: IndexRegistry,
  options: RetryOptions = {},
): Promise<RetryResult> {
  const index = options.objectType === undefined ? null : registry.get(options.objectType);
  const objectType = index?.objectType ?? null;
  let objectIds: string[] | null = null;
  if (options.objectIds !== undefined) {
    if (index === null) {
      throw new ValidationError('objectIds', options.objectIds, 'need an objectType, because ids are unique per type only');
    }
    if (!Array.isArray(options.objectIds) || options.objectIds.length === 0) {
      throw new ValidationError('objectIds', options.objectIds, 'must be a non-empty array of object ids');
    }
    // The same normalisation as marks, so that "007" finds the rows of 7.
    objectIds = normalizeIds(options.objectIds, index.keyType);
  }

  const result = await sql`
    UPDATE ${table(outboxSchema, OUTBOX_TABLE)}
    SET state = 'pending', attempts = 0, available_at = now()
    WHERE state = 'dead'
      AND (${objectType}::text IS NULL OR object_type = ${objectType})
      AND (${objectIds}::text[] IS NULL OR object_id = ANY(${objectIds}::text[]))
  `.execute(db);
  return { retried: Number(result.numAffectedRows ?? 0) };
}

function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

function roundSeconds(seconds: number): number {
  return Math.round(seconds * 1000) / 1000;
}
