import { sql, type Kysely, type QueryResult, type RawBuilder } from 'kysely';
import { findTextProblem, ValidationError } from './errors.js';
import { assertIdentifier, table } from './identifiers.js';
import type { IndexRegistry, KeyType } from './indexes.js';
import { OUTBOX_TABLE } from './migrations.js';

/** An object id in any form the application uses. */
export type ObjectId = string | number | bigint;

export interface MarkOptions {
  /**
   * Schema whose tables and cache the rebuild uses. Default: the
   * transaction's `current_schema()`, the first existing schema of its search_path.
   */
  readonly schema?: string;
}

/** The outcome of one mark call. */
export interface MarkResult {
  /** Id of the writing transaction (`pg_current_xact_id()`), as text. */
  readonly transactionId: string | null;
  /** Schema recorded with the marks. */
  readonly schema: string | null;
  /** Number of distinct objects marked by this call. */
  readonly objects: number;
}

export type MarkOperation = 'upsert' | 'delete';

/** Maximum length of an object id, in characters. */
export const MAX_OBJECT_ID_LENGTH = 255;
/** Maximum number of ids per mark call. Split larger sets into several calls. */
export const MAX_IDS_PER_MARK = 100_000;

const INTEGER_PATTERN = /^-?\d{1,19}$/;
const UUID_PATTERN = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;
const KEY_RANGES: Partial<Record<KeyType, readonly [bigint, bigint]>> = {
  bigint: [-(2n ** 63n), 2n ** 63n - 1n],
  integer: [-(2n ** 31n), 2n ** 31n - 1n],
};

/**
 * Inserts outbox rows for the given objects in one statement, in the
 * executor's transaction (or as its own statement on a plain Kysely).
 * Marking an object that its transaction already marked updates that row
 * rather than adding one. The key includes the transaction id, so two
 * transactions never write the same key and never wait on each other.
 */
export async function insertMarks(
  executor: Kysely<any>,
  outboxSchema: string,
  registry: IndexRegistry,
  objectType: string,
  ids: ObjectId | readonly ObjectId[],
  operation: MarkOperation,
  options: MarkOptions = {},
): Promise<MarkResult> {
  const index = registry.get(objectType);
  const objectIds = normalizeIds(ids, index.keyType);
  const schema = options.schema === undefined ? null : assertIdentifier('schema', options.schema);
  if (objectIds.length === 0) return { transactionId: null, schema: null, objects: 0 };

  // DO UPDATE rather than DO NOTHING so that a deletion after an update in
  // the same transaction is recorded as a deletion. Ids were de-duplicated
  // above, because one INSERT may not update the same row twice.
  const result = await runMarkStatement(sql<{ transaction_id: string; target_schema: string; objects: string }>`
    WITH marked AS (
      INSERT INTO ${table(outboxSchema, OUTBOX_TABLE)}
        (transaction_id, target_schema, object_type, object_id, operation)
      SELECT pg_current_xact_id(), coalesce(${schema}::text, current_schema()), ${objectType}::text, id, ${operation}::text
      FROM unnest(${objectIds}::text[]) AS id
      ON CONFLICT (transaction_id, target_schema, object_type, object_id)
      DO UPDATE SET operation = EXCLUDED.operation
      RETURNING 1
    )
    SELECT pg_current_xact_id()::text AS transaction_id,
           coalesce(${schema}::text, current_schema()) AS target_schema, count(*) AS objects
    FROM marked
  `, executor);

  const row = result.rows[0];
  return {
    transactionId: row?.transaction_id ?? null,
    schema: row?.target_schema ?? null,
    objects: Number(row?.objects ?? 0),
  };
}

/** SQLSTATE of a NOT NULL violation. */
const NOT_NULL_VIOLATION = '23502';

async function runMarkStatement<Row>(statement: RawBuilder<Row>, executor: Kysely<any>): Promise<QueryResult<Row>> {
  try {
    return await statement.execute(executor);
  } catch (error) {
    // The only column that can be NULL here is target_schema: current_schema()
    // is NULL when no schema on the search_path exists.
    if ((error as { code?: unknown }).code === NOT_NULL_VIOLATION) {
      throw new ValidationError(
        'schema',
        null,
        "could not be determined because the transaction's search_path names no existing schema; pass { schema } to mark",
        { cause: error },
      );
    }
    throw error;
  }
}

/** Validates ids against the index's key type and returns them as distinct strings. */
export function normalizeIds(ids: ObjectId | readonly ObjectId[], keyType: KeyType): string[] {
  const list = Array.isArray(ids) ? (ids as readonly ObjectId[]) : [ids as ObjectId];
  if (list.length > MAX_IDS_PER_MARK) {
    throw new ValidationError(
      'ids',
      list.length,
      `is the number of ids given, above the maximum of ${MAX_IDS_PER_MARK} per mark call; split them into several calls`,
    );
  }
  const distinct = new Set<string>();
  // A for loop rather than forEach, which skips the holes of a sparse array:
  // a hole is read as undefined and rejected like any other missing id.
  for (let position = 0; position < list.length; position += 1) {
    distinct.add(normalizeId(list[position], keyType, list.length === 1 ? 'id' : `ids[${position}]`));
  }
  return [...distinct];
}

function normalizeId(id: unknown, keyType: KeyType, path: string): string {
  let text: string;
  if (typeof id === 'number') {
    if (!Number.isSafeInteger(id)) throw new ValidationError(path, id, 'must be a safe integer or a string');
    text = String(id);
  } else if (typeof id === 'bigint') {
    text = id.toString();
  } else if (typeof id === 'string') {
    text = id;
  } else {
    throw new ValidationError(path, id, 'must be a string, an integer or a bigint');
  }

  if (text.length === 0 || text.length > MAX_OBJECT_ID_LENGTH) {
    throw new ValidationError(path, id, `must be 1 to ${MAX_OBJECT_ID_LENGTH} characters long`);
  }
  const textProblem = findTextProblem(text);
  if (textProblem !== undefined) throw new ValidationError(path, id, textProblem);

  const range = KEY_RANGES[keyType];
  if (range !== undefined) {
    if (!INTEGER_PATTERN.test(text) || BigInt(text) < range[0] || BigInt(text) > range[1]) {
      throw new ValidationError(path, id, `must be an integer from ${range[0]} to ${range[1]} (key type ${keyType})`);
    }
    return BigInt(text).toString();
  }
  if (keyType === 'uuid') {
    if (!UUID_PATTERN.test(text)) throw new ValidationError(path, id, 'must be a UUID');
    return text.toLowerCase().replace(/^(.{8})-?(.{4})-?(.{4})-?(.{4})-?(.{12})$/, '$1-$2-$3-$4-$5');
  }
  return text;
}
