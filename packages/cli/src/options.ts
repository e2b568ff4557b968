import { LOOKUPS, ValidationError, type IndexRegistry, type Lookup } from '@search-outbox/core';
import { LOG_LEVELS, type LogLevel } from './logger.js';

/**
 * Parses an integer option given as text. Throws a ValidationError such as
 * `Invalid --limit: "abc" must be an integer from 1 to 1000`.
 */
export function parseIntegerOption(name: string, text: string, min: number, max: number): number {
  const rule = `must be an integer from ${min} to ${max}`;
  if (!/^-?\d+$/.test(text.trim())) throw new ValidationError(name, text, rule);
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min || value > max) throw new ValidationError(name, text, rule);
  return value;
}

/** Parses an optional integer option; undefined when the option was not given. */
export function parseOptionalInteger(name: string, text: string | undefined, min: number, max: number): number | undefined {
  return text === undefined ? undefined : parseIntegerOption(name, text, min, max);
}

export function parseLookup(text: string): Lookup {
  if (!(LOOKUPS as readonly string[]).includes(text)) {
    throw new ValidationError('--lookup', text, `must be one of ${LOOKUPS.join(', ')}`);
  }
  return text as Lookup;
}

export function parseLogLevel(text: string): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(text)) {
    throw new ValidationError('--log-level', text, `must be one of ${LOG_LEVELS.join(', ')}`);
  }
  return text as LogLevel;
}

/**
 * Checks `--type` values against the declared object types. Throws a
 * ValidationError naming the unknown type and listing the declared ones.
 */
export function parseObjectTypes(registry: IndexRegistry, types: readonly string[] | undefined): string[] | undefined {
  if (types === undefined || types.length === 0) return undefined;
  return types.map((type) => registry.get(type, '--type').objectType);
}

/** Collects a repeatable option into an array, for commander. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const SCHEMA_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/** The rule that a schema name breaks, for error messages. */
export const SCHEMA_NAME_RULE =
  'is not a valid schema name; use a letter or underscore followed by letters, digits or underscores (at most 63)';

/** Returns whether `value` is a schema name the CLI accepts: an unquoted PostgreSQL identifier. */
export function isSchemaName(value: unknown): value is string {
  return typeof value === 'string' && SCHEMA_PATTERN.test(value);
}

/** Checks a schema name option: an unquoted PostgreSQL identifier. */
export function parseSchema(name: string, text: string): string {
  if (!isSchemaName(text)) throw new ValidationError(name, text, SCHEMA_NAME_RULE);
  return text;
}
