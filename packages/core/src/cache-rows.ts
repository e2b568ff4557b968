import { sql, type RawBuilder } from 'kysely';
import { table } from './identifiers.js';
import type { ResolvedIndex, ValueSource } from './indexes.js';

/**
 * Builds SQL over one index's source table: the joins that related-object
 * sources need and the expression of each source, all qualified with the
 * schema recorded by the mark.
 */
class SourceQuery {
  readonly #schema: string;
  readonly #index: ResolvedIndex;
  readonly #joins: RawBuilder<unknown>[] = [];
  readonly #joinAliases = new Map<string, string>();

  constructor(schema: string, index: ResolvedIndex) {
    this.#schema = schema;
    this.#index = index;
  }

  get from(): RawBuilder<unknown> {
    return sql`${table(this.#schema, this.#index.table)} AS t ${sql.join(this.#joins, sql` `)}`;
  }

  /** The source table's primary key as text, the form stored in `object_id`. */
  get objectId(): RawBuilder<unknown> {
    return sql`t.${sql.id(this.#index.primaryKey)}::text`;
  }

  /** Expression of a value source, as text. */
  value(source: ValueSource): RawBuilder<unknown> {
    if ('column' in source) return sql`t.${sql.id(source.column)}::text`;
    if ('json' in source) return sql`(t.${sql.id(source.json.column)}::jsonb ->> ${source.json.key})`;

    const related = source.related;
    const joinKey = `${related.foreignKey}|${related.table}|${related.primaryKey ?? 'id'}`;
    let alias = this.#joinAliases.get(joinKey);
    if (alias === undefined) {
      alias = `r${this.#joinAliases.size}`;
      this.#joinAliases.set(joinKey, alias);
      this.#joins.push(sql`
        LEFT JOIN ${table(this.#schema, related.table)} AS ${sql.id(alias)}
        ON ${sql.id(alias, related.primaryKey ?? 'id')} = t.${sql.id(related.foreignKey)}`);
    }
    return sql`${sql.id(alias, related.column ?? 'name')}::text`;
  }

  /** The index's `where` conditions, or TRUE. */
  get filter(): RawBuilder<unknown> {
    const conditions = Object.entries(this.#index.where).map(([column, expected]) =>
      expected === null
        ? sql`t.${sql.id(column)} IS NULL`
        : sql`t.${sql.id(column)} IS NOT DISTINCT FROM ${expected}`,
    );
    return conditions.length === 0 ? sql`TRUE` : sql.join(conditions, sql` AND `);
  }

  /** Matches rows whose primary key is in the bound array of ids. */
  keyIn(ids: readonly string[]): RawBuilder<unknown> {
    return sql`t.${sql.id(this.#index.primaryKey)} = ANY(${ids}::${sql.raw(this.#index.keyType)}[])`;
  }
}

/**
 * SELECT producing the cache rows of the given objects of one index:
 * (object_type, object_id, field, type, value, weight). Empty and NULL values
 * and numeric zeros produce no row, and so does an object that is missing or
 * fails the index's `where` conditions.
 */
export function selectCacheRows(schema: string, index: ResolvedIndex, ids: readonly string[]): RawBuilder<unknown> {
  const source = new SourceQuery(schema, index);
  const values = index.fields.map(
    (field) =>
      sql`(${field.name}::text, ${field.weight}::smallint, ${field.type}::text, ${source.value(field.source)})`,
  );
  // The CASE guards the numeric cast: PostgreSQL does not promise to
  // evaluate the operands of AND in order, but CASE branches are.
  return sql`
    SELECT ${index.objectType}::text AS object_type, ${source.objectId} AS object_id,
           v.field, v.type, v.value, v.weight
    FROM ${source.from}
    CROSS JOIN LATERAL (VALUES ${sql.join(values)}) AS v(field, weight, type, value)
    WHERE ${source.keyIn(ids)} AND ${source.filter}
      AND v.value IS NOT NULL AND v.value <> ''
      AND CASE WHEN v.type IN ('int', 'float') THEN v.value::numeric <> 0 ELSE TRUE END`;
}

/** SELECT of (object_id, display jsonb) for the given objects of one index. */
export function selectDisplay(schema: string, index: ResolvedIndex, ids: readonly string[]): RawBuilder<unknown> {
  const source = new SourceQuery(schema, index);
  const pairs = index.display.map((attribute) => sql`${attribute.name}::text, ${source.value(attribute.source)}`);
  const display = pairs.length === 0 ? sql`'{}'::jsonb` : sql`jsonb_build_object(${sql.join(pairs)})`;
  return sql`
    SELECT ${index.objectType}::text AS object_type, ${source.objectId} AS object_id, ${display} AS display
    FROM ${source.from}
    WHERE ${source.keyIn(ids)}`;
}

/** SELECT of the primary keys, as text, of one index's rows after `afterKey`, in key order. */
export function selectKeyChunk(
  schema: string,
  index: ResolvedIndex,
  afterKey: string | null,
  limit: number,
): RawBuilder<{ object_id: string }> {
  const key = sql`t.${sql.id(index.primaryKey)}`;
  const after = afterKey === null ? sql`TRUE` : sql`${key} > ${afterKey}::${sql.raw(index.keyType)}`;
  return sql<{ object_id: string }>`
    SELECT ${key}::text AS object_id FROM ${table(schema, index.table)} AS t
    WHERE ${after} ORDER BY ${key} LIMIT ${limit}`;
}
