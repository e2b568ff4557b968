import { CACHE_TABLE, type IndexRegistry, type ResolvedIndex, type ValueSource } from '@search-outbox/core';
import { sql, type Kysely, type RawBuilder } from 'kysely';
import { time } from './stats.js';

/**
 * The database's own limit: the cache rows of many objects built by one
 * `INSERT … SELECT` straight from the source tables, with no outbox, no
 * claiming, no locks and no per-batch transactions.
 *
 * The SELECT repeats the one that the drain runs per index (core's
 * `selectCacheRows`, which core does not export). It writes one row per
 * non-empty field and skips numeric zeros. A related object's name comes
 * through a LEFT JOIN, a JSON key through `->>`, and the index's `where`
 * conditions apply.
 * `test/bench/smoke.test.ts` checks that both produce the same rows.
 */

/** Object ids per object type. Functions that take an optional selection read every row when it is omitted. */
export type ObjectSelection = ReadonlyMap<string, readonly string[]>;

/** SELECT of (object_type, object_id, field, type, value, weight) over one index, for some or all objects. */
export function selectIndexRows(schema: string, index: ResolvedIndex, ids?: readonly string[]): RawBuilder<unknown> {
  const joins: RawBuilder<unknown>[] = [];
  const aliases = new Map<string, string>();
  const valueOf = (source: ValueSource): RawBuilder<unknown> => {
    if ('column' in source) return sql`t.${sql.id(source.column)}::text`;
    if ('json' in source) return sql`(t.${sql.id(source.json.column)}::jsonb ->> ${source.json.key})`;
    const related = source.related;
    const key = `${related.foreignKey}|${related.table}|${related.primaryKey ?? 'id'}`;
    let alias = aliases.get(key);
    if (alias === undefined) {
      alias = `r${aliases.size}`;
      aliases.set(key, alias);
      joins.push(sql`LEFT JOIN ${sql.id(schema, related.table)} AS ${sql.id(alias)}
        ON ${sql.id(alias, related.primaryKey ?? 'id')} = t.${sql.id(related.foreignKey)}`);
    }
    return sql`${sql.id(alias, related.column ?? 'name')}::text`;
  };

  const values = index.fields.map(
    (field) => sql`(${field.name}::text, ${field.weight}::smallint, ${field.type}::text, ${valueOf(field.source)})`,
  );
  const conditions = Object.entries(index.where).map(([column, expected]) =>
    expected === null ? sql`t.${sql.id(column)} IS NULL` : sql`t.${sql.id(column)} IS NOT DISTINCT FROM ${expected}`,
  );
  const keyFilter =
    ids === undefined
      ? sql`TRUE`
      : sql`t.${sql.id(index.primaryKey)} = ANY(${ids}::${sql.raw(index.keyType)}[])`;
  const filter = conditions.length === 0 ? sql`TRUE` : sql.join(conditions, sql` AND `);

  return sql`
    SELECT ${index.objectType}::text AS object_type, t.${sql.id(index.primaryKey)}::text AS object_id,
           v.field, v.type, v.value, v.weight
    FROM ${sql.id(schema, index.table)} AS t ${sql.join(joins, sql` `)}
    CROSS JOIN LATERAL (VALUES ${sql.join(values)}) AS v(field, weight, type, value)
    WHERE ${keyFilter} AND ${filter}
      AND v.value IS NOT NULL AND v.value <> ''
      AND CASE WHEN v.type IN ('int', 'float') THEN v.value::numeric <> 0 ELSE TRUE END`;
}

/** UNION ALL of the per-index SELECTs: every declared type, or only the selected objects. */
export function selectLimitRows(registry: IndexRegistry, schema: string, selection?: ObjectSelection): RawBuilder<unknown> {
  const parts: RawBuilder<unknown>[] = [];
  if (selection === undefined) {
    for (const index of registry.all) parts.push(sql`(${selectIndexRows(schema, index)})`);
  } else {
    for (const [objectType, ids] of selection) {
      if (ids.length > 0) parts.push(sql`(${selectIndexRows(schema, registry.get(objectType), ids)})`);
    }
  }
  if (parts.length === 0) {
    return sql`SELECT NULL::text AS object_type, NULL::text AS object_id, NULL::text AS field,
      NULL::text AS type, NULL::text AS value, NULL::smallint AS weight WHERE FALSE`;
  }
  return sql.join(parts, sql` UNION ALL `);
}

/** Counts the cache rows that the declarations produce, without writing them. */
export async function countLimitRows(
  db: Kysely<any>,
  registry: IndexRegistry,
  schema = 'public',
  selection?: ObjectSelection,
): Promise<number> {
  const result = await sql<{ rows: string }>`
    SELECT count(*) AS rows FROM (${selectLimitRows(registry, schema, selection)}) AS produced
  `.execute(db);
  return Number(result.rows[0]?.rows ?? 0);
}

/**
 * Writes the cache rows of the selected objects (default: all) with one
 * `INSERT … SELECT` and returns the rows written and the wall time in
 * milliseconds. The caller empties the cache of those objects first,
 * because the cache's primary key rejects a second copy of a row.
 */
export async function insertAtLimit(
  db: Kysely<any>,
  registry: IndexRegistry,
  schema = 'public',
  selection?: ObjectSelection,
): Promise<{ rows: number; durationMs: number }> {
  let rows = 0;
  const durationMs = await time(async () => {
    const result = await sql`
      INSERT INTO ${sql.id(schema, CACHE_TABLE)} (object_type, object_id, field, type, value, weight)
      ${selectLimitRows(registry, schema, selection)}
    `.execute(db);
    rows = Number(result.numAffectedRows ?? 0);
  });
  return { rows, durationMs };
}

/** Empties the cache table of `schema`. */
export async function truncateCache(db: Kysely<any>, schema = 'public'): Promise<void> {
  await sql`TRUNCATE ${sql.id(schema, CACHE_TABLE)}`.execute(db);
}

/** Counts the rows in the cache table of `schema`. */
export async function countCacheRows(db: Kysely<any>, schema = 'public'): Promise<number> {
  const result = await sql<{ rows: string }>`SELECT count(*) AS rows FROM ${sql.id(schema, CACHE_TABLE)}`.execute(db);
  return Number(result.rows[0]?.rows ?? 0);
}
