import { sql, type RawBuilder } from 'kysely';
import { ValidationError } from './errors.js';

/**
 * An unquoted PostgreSQL identifier: a letter or underscore, then letters,
 * digits or underscores, at most 63 bytes (NAMEDATALEN - 1).
 */
const IDENTIFIER_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** Returns whether `name` is a safe identifier for a schema, table or column. */
export function isIdentifier(name: unknown): name is string {
  return typeof name === 'string' && IDENTIFIER_PATTERN.test(name);
}

/** Throws a ValidationError naming `path` unless `name` is a safe identifier. */
export function assertIdentifier(path: string, name: unknown): string {
  if (!isIdentifier(name)) {
    throw new ValidationError(
      path,
      name,
      'is not a valid identifier; use a letter or underscore followed by letters, digits or underscores (at most 63)',
    );
  }
  return name;
}

/** Builds a quoted, schema-qualified table reference. */
export function table(schema: string, name: string): RawBuilder<unknown> {
  return sql.id(schema, name);
}
