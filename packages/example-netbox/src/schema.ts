import { sql, type Kysely } from 'kysely';
import type { TableDefinition } from './model.js';

/**
 * Drops and creates every application table of the example in `schema`
 * (creating the schema when missing). Every table's `id` is its primary key.
 */
export async function createApplicationTables(
  db: Kysely<any>,
  schema: string,
  tables: readonly TableDefinition[],
): Promise<void> {
  await db.transaction().execute(async (trx) => {
    await sql`CREATE SCHEMA IF NOT EXISTS ${sql.id(schema)}`.execute(trx);
    for (const definition of tables) {
      await sql`DROP TABLE IF EXISTS ${sql.id(schema, definition.table)}`.execute(trx);
      await sql`CREATE TABLE ${sql.id(schema, definition.table)} (${columnList(definition)})`.execute(trx);
    }
  });
}

/** Drops every application table of the example from `schema`. */
export async function dropApplicationTables(
  db: Kysely<any>,
  schema: string,
  tables: readonly TableDefinition[],
): Promise<void> {
  for (const definition of tables) {
    await sql`DROP TABLE IF EXISTS ${sql.id(schema, definition.table)}`.execute(db);
  }
}

function columnList(definition: TableDefinition) {
  const columns = definition.columns.map((column) => {
    // Column types come from the catalogue in this package, never from input.
    const constraint = column.name === 'id' ? ' PRIMARY KEY' : '';
    return sql`${sql.id(column.name)} ${sql.raw(column.type)}${sql.raw(constraint)}`;
  });
  return sql.join(columns);
}
