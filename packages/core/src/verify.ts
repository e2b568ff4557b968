import { sql, type Kysely } from 'kysely';
import { IndexDeclarationError } from './errors.js';
import type { IndexRegistry, ResolvedIndex, ValueSource } from './indexes.js';

/**
 * Checks every declaration against a schema's tables: the source table, the
 * primary key and the column behind each field, display attribute and
 * condition must exist. Throws an IndexDeclarationError that names the index
 * and the field of the first problem, so that a typo fails at startup rather
 * than at every drain.
 */
export async function verifyIndexes(db: Kysely<any>, registry: IndexRegistry, schema: string): Promise<void> {
  const result = await sql<{ table_name: string; column_name: string }>`
    SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ${schema}
  `.execute(db);
  const columns = new Map<string, Set<string>>();
  for (const row of result.rows) {
    const set = columns.get(row.table_name) ?? new Set<string>();
    set.add(row.column_name);
    columns.set(row.table_name, set);
  }

  for (const index of registry.all) {
    verifyIndex(index, schema, columns);
  }
}

function verifyIndex(index: ResolvedIndex, schema: string, columns: ReadonlyMap<string, ReadonlySet<string>>): void {
  const requireColumn = (tableName: string, column: string, field: string | undefined): void => {
    const tableColumns = columns.get(tableName);
    if (tableColumns === undefined) {
      throw new IndexDeclarationError(index.objectType, field, `table "${schema}.${tableName}" does not exist`);
    }
    if (!tableColumns.has(column)) {
      throw new IndexDeclarationError(
        index.objectType,
        field,
        `column "${column}" does not exist in table "${schema}.${tableName}"`,
      );
    }
  };
  const requireSource = (source: ValueSource, field: string): void => {
    if ('column' in source) {
      requireColumn(index.table, source.column, field);
    } else if ('json' in source) {
      requireColumn(index.table, source.json.column, field);
    } else {
      requireColumn(index.table, source.related.foreignKey, field);
      requireColumn(source.related.table, source.related.primaryKey ?? 'id', field);
      requireColumn(source.related.table, source.related.column ?? 'name', field);
    }
  };

  requireColumn(index.table, index.primaryKey, undefined);
  for (const field of index.fields) requireSource(field.source, field.name);
  for (const attribute of index.display) requireSource(attribute.source, attribute.name);
  for (const column of Object.keys(index.where)) requireColumn(index.table, column, undefined);
}
