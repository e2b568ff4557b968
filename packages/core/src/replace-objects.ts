import { sql, type Transaction } from 'kysely';
import { selectCacheRows } from './cache-rows.js';
import { table } from './identifiers.js';
import type { IndexRegistry } from './indexes.js';
import { CACHE_TABLE } from './migrations.js';

/** One object of the cache: its schema, type and id. */
export interface ObjectKey {
  readonly schema: string;
  readonly objectType: string;
  readonly objectId: string;
}

export function objectKeyString(key: ObjectKey): string {
  return `${key.schema}\u001f${key.objectType}\u001f${key.objectId}`;
}

/**
 * Takes a transaction-scoped advisory lock per object, in one statement and
 * in a fixed order so that two lockers never deadlock. Drains and rebuilds
 * that touch the same object therefore read its live row and write its cache
 * rows one after the other, and the last writer always saw the newest row:
 * without this, a drainer that read an older row could commit after one that
 * read the newer row and leave a stale value behind.
 */
export async function lockObjects(trx: Transaction<any>, keys: readonly ObjectKey[]): Promise<void> {
  if (keys.length === 0) return;
  await sql`
    SELECT count(pg_advisory_xact_lock(k.lock_key)) FROM (
      SELECT DISTINCT hashtextextended(s || chr(31) || t || chr(31) || i, 0) AS lock_key
      FROM unnest(${keys.map((k) => k.schema)}::text[], ${keys.map((k) => k.objectType)}::text[],
                  ${keys.map((k) => k.objectId)}::text[]) AS u(s, t, i)
      ORDER BY 1
    ) AS k
  `.execute(trx);
}

/**
 * Replaces every cache row of the given objects of one schema with rows
 * built from their live source rows, in two statements whatever the number
 * of objects. Returns the number of cache rows each object now has. An
 * object missing from the result has none, because it was deleted, fails its
 * index's conditions, or has no non-empty field. The caller must hold the
 * object locks.
 */
export async function replaceObjects(
  trx: Transaction<any>,
  registry: IndexRegistry,
  schema: string,
  keys: readonly ObjectKey[],
): Promise<Map<string, number>> {
  const rowCounts = new Map<string, number>();
  if (keys.length === 0) return rowCounts;

  await sql`
    DELETE FROM ${table(schema, CACHE_TABLE)} AS c
    USING unnest(${keys.map((k) => k.objectType)}::text[], ${keys.map((k) => k.objectId)}::text[])
      AS k(object_type, object_id)
    WHERE c.object_type = k.object_type AND c.object_id = k.object_id
  `.execute(trx);

  const idsByType = new Map<string, string[]>();
  for (const key of keys) {
    const ids = idsByType.get(key.objectType) ?? [];
    ids.push(key.objectId);
    idsByType.set(key.objectType, ids);
  }
  const selects = [...idsByType].map(
    ([objectType, ids]) => sql`(${selectCacheRows(schema, registry.get(objectType), ids)})`,
  );

  const inserted = await sql<{ object_type: string; object_id: string; rows: number }>`
    WITH inserted AS (
      INSERT INTO ${table(schema, CACHE_TABLE)} (object_type, object_id, field, type, value, weight)
      ${sql.join(selects, sql` UNION ALL `)}
      RETURNING object_type, object_id
    )
    SELECT object_type, object_id, count(*)::int AS rows FROM inserted GROUP BY object_type, object_id
  `.execute(trx);

  for (const row of inserted.rows) {
    rowCounts.set(objectKeyString({ schema, objectType: row.object_type, objectId: row.object_id }), row.rows);
  }
  return rowCounts;
}

/**
 * SQLSTATE classes after which the transaction or the connection is
 * unusable, so retrying object by object inside it is pointless. They are 08
 * connection exception, 40 transaction rollback, 53 insufficient resources,
 * 57 operator intervention, 58 system error and XX internal error. A
 * statement timeout (57014) is the exception, because one object can cause it.
 */
const FATAL_SQLSTATE_CLASSES = new Set(['08', '40', '53', '57', '58', 'XX']);

/**
 * Rebuilds the objects in one set-based step. When that fails on the data
 * of some object, the step is rolled back to a savepoint and the objects
 * are split in halves until each failing object is alone. One bad object
 * therefore costs O(log n) extra statements and never holds up the rest.
 */
export async function replaceObjectsIsolated<Key extends ObjectKey>(
  trx: Transaction<any>,
  registry: IndexRegistry,
  schema: string,
  objects: readonly Key[],
  rebuiltKeys: Map<string, number>,
  failures: { object: Key; error: unknown }[],
): Promise<void> {
  await sql`SAVEPOINT search_outbox_rebuild`.execute(trx);
  try {
    const counts = await replaceObjects(trx, registry, schema, objects);
    await sql`RELEASE SAVEPOINT search_outbox_rebuild`.execute(trx);
    for (const [key, rows] of counts) rebuiltKeys.set(key, rows);
    return;
  } catch (error) {
    if (isFatal(error)) throw error;
    await sql`ROLLBACK TO SAVEPOINT search_outbox_rebuild`.execute(trx);
    await sql`RELEASE SAVEPOINT search_outbox_rebuild`.execute(trx);
    const [only] = objects;
    if (objects.length === 1 && only !== undefined) {
      failures.push({ object: only, error });
      return;
    }
  }
  const middle = Math.ceil(objects.length / 2);
  await replaceObjectsIsolated(trx, registry, schema, objects.slice(0, middle), rebuiltKeys, failures);
  await replaceObjectsIsolated(trx, registry, schema, objects.slice(middle), rebuiltKeys, failures);
}

function isFatal(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || code.length !== 5) return true;
  if (code === '57014') return false;
  return FATAL_SQLSTATE_CLASSES.has(code.slice(0, 2));
}
