import type { IndexedField, SearchIndex } from '@search-outbox/core';
import { sql, type Kysely } from 'kysely';
import { FIXTURE_INDEXES } from './fixtures.js';

type SourceRow = Record<string, unknown>;

export interface ExpectedCacheOptions {
  /** Schema of the source tables. Default: `public`. */
  readonly schema?: string;
  /** Index declarations to apply. Default: `FIXTURE_INDEXES`. */
  readonly indexes?: readonly SearchIndex[];
  /** Object types to compute. Default: every declared type. */
  readonly objectTypes?: readonly string[];
}

/**
 * Computes in JavaScript the cache rows that a full rebuild must produce from
 * the live source tables, in the line format of `readCache`
 * ("type|id|field|type|value|weight"), sorted with the JavaScript default sort.
 * It shares no SQL with the core, so it is an independent oracle.
 *
 * Rules: a NULL or empty value gives no row, an `int` or `float` value equal
 * to zero gives no row, and a row that fails the index's `where` gives none.
 * Only `str`, `int` and `float` fields are supported, because PostgreSQL's
 * `inet::text` differs from the text that node-postgres returns for an inet.
 */
export async function expectedCacheLines(db: Kysely<any>, options: ExpectedCacheOptions = {}): Promise<string[]> {
  const schema = options.schema ?? 'public';
  const indexes = (options.indexes ?? FIXTURE_INDEXES).filter(
    (index) => options.objectTypes === undefined || options.objectTypes.includes(index.objectType),
  );

  const lines: string[] = [];
  for (const index of indexes) {
    const rows = await selectAll(db, schema, index.table);
    const relatedRows = await loadRelatedTables(db, schema, index.fields);
    const primaryKey = index.primaryKey ?? 'id';

    for (const row of rows) {
      if (!matchesWhere(row, index.where ?? {})) continue;
      for (const field of index.fields) {
        const value = fieldValue(row, field, relatedRows);
        if (!producesRow(value, field)) continue;
        lines.push([index.objectType, String(row[primaryKey]), field.name, field.type ?? 'str', value, field.weight].join('|'));
      }
    }
  }
  return lines.sort();
}

/** Reads a schema's cache lines like `readCache`, sorted with the JavaScript default sort for comparison with the oracle. */
export async function readSortedCache(db: Kysely<any>, schema = 'public'): Promise<string[]> {
  const result = await sql<{ line: string }>`
    SELECT concat_ws('|', object_type, object_id, field, type, value, weight) AS line
    FROM ${sql.id(schema, 'search_cache')}
  `.execute(db);
  return result.rows.map((row) => row.line).sort();
}

async function selectAll(db: Kysely<any>, schema: string, tableName: string): Promise<SourceRow[]> {
  const result = await sql<SourceRow>`SELECT * FROM ${sql.id(schema, tableName)}`.execute(db);
  return result.rows;
}

/** Loads every table that a related source of `fields` points to, keyed by table name and then by primary key as text. */
async function loadRelatedTables(
  db: Kysely<any>,
  schema: string,
  fields: readonly IndexedField[],
): Promise<Map<string, Map<string, SourceRow>>> {
  const tables = new Map<string, Map<string, SourceRow>>();
  for (const field of fields) {
    if (field.source === undefined || !('related' in field.source)) continue;
    const { table: relatedTable, primaryKey = 'id' } = field.source.related;
    if (tables.has(relatedTable)) continue;
    const byKey = new Map<string, SourceRow>();
    for (const row of await selectAll(db, schema, relatedTable)) byKey.set(String(row[primaryKey]), row);
    tables.set(relatedTable, byKey);
  }
  return tables;
}

function matchesWhere(row: SourceRow, where: Readonly<Record<string, unknown>>): boolean {
  return Object.entries(where).every(([column, expected]) => {
    const actual = row[column];
    if (expected === null || actual === null) return expected === actual;
    return String(actual) === String(expected);
  });
}

function fieldValue(row: SourceRow, field: IndexedField, relatedRows: Map<string, Map<string, SourceRow>>): string | null {
  if ((field.type ?? 'str') === 'inet' || field.type === 'cidr') {
    throw new Error(`the oracle does not support field "${field.name}" of type ${field.type}`);
  }
  const source = field.source ?? { column: field.name };
  if ('column' in source) return columnText(row[source.column]);
  if ('json' in source) {
    const document = row[source.json.column] as Record<string, unknown> | null;
    return document === null ? null : jsonText(document[source.json.key]);
  }
  const foreignKey = row[source.related.foreignKey];
  if (foreignKey === null || foreignKey === undefined) return null;
  const related = relatedRows.get(source.related.table)?.get(String(foreignKey));
  return related === undefined ? null : columnText(related[source.related.column ?? 'name']);
}

function producesRow(value: string | null, field: IndexedField): value is string {
  if (value === null || value === '') return false;
  if (field.type === 'int' || field.type === 'float') return Number(value) !== 0;
  return true;
}

/** Converts a column value as node-postgres returns it to the text of PostgreSQL's `::text` cast. */
function columnText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  throw new Error(`the oracle cannot convert a column value of type ${typeof value} to text: ${JSON.stringify(value)}`);
}

/** Converts a JSON value to the text of PostgreSQL's `->>` operator. Only strings, integers and booleans are supported. */
function jsonText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isInteger(value)) return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  throw new Error(`the oracle cannot convert a JSON value to text: ${JSON.stringify(value)}`);
}
