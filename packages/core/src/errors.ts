/** Base class of every error that search-outbox raises on purpose. */
export class SearchOutboxError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * An input from outside (a query, an option, an id, a payload) is invalid.
 * `path` names the input and `value` is what was given.
 */
export class ValidationError extends SearchOutboxError {
  readonly path: string;
  readonly value: unknown;

  constructor(path: string, value: unknown, rule: string, options?: { cause?: unknown }) {
    super(`Invalid ${path}: ${describeValue(value)} ${rule}`, options);
    this.path = path;
    this.value = value;
  }
}

/** An object type that no search index declares. */
export class UnknownObjectTypeError extends ValidationError {
  constructor(path: string, objectType: unknown, known: readonly string[]) {
    const list = known.length > 10 ? `${known.slice(0, 10).join(', ')}, ...` : known.join(', ');
    super(path, objectType, `is not a declared object type; declared types are: ${list || '(none)'}`);
  }
}

/** A search index declaration is invalid; `index` and `field` name where. */
export class IndexDeclarationError extends SearchOutboxError {
  readonly index: string;
  readonly field: string | undefined;

  constructor(index: string, field: string | undefined, problem: string) {
    const where = field === undefined ? `search index "${index}"` : `search index "${index}", field "${field}"`;
    super(`Invalid ${where}: ${problem}`);
    this.index = index;
    this.field = field;
  }
}

/** The database schema cannot be migrated, or is newer than this code. */
export class MigrationError extends SearchOutboxError {}

/** Formats a value for an error message, cutting long strings so messages stay readable. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') {
    const shown = value.length > 80 ? `${value.slice(0, 80)}... (${value.length} characters)` : value;
    return JSON.stringify(shown);
  }
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'number' || value === undefined || value === null) return String(value);
  if (typeof value === 'function') return 'a function';
  if (value instanceof Date) return `a Date (${Number.isNaN(value.getTime()) ? 'invalid' : value.toISOString()})`;
  // JSON.stringify shows both as {}, which hides what was passed.
  if (value instanceof Set) return `a Set of ${value.size} values`;
  if (value instanceof Map) return `a Map of ${value.size} entries`;
  try {
    const json = JSON.stringify(value);
    if (json === undefined) return String(value);
    return json.length > 80 ? `${json.slice(0, 80)}...` : json;
  } catch {
    return String(value);
  }
}

/**
 * Returns why `text` cannot be sent to PostgreSQL as a text value, or
 * undefined. PostgreSQL rejects NUL characters in text. node-postgres 8
 * encodes strings with Buffer's UTF-8 encoder, which turns a lone surrogate
 * into U+FFFD, so the database would see another string.
 */
export function findTextProblem(text: string): string | undefined {
  const nul = text.indexOf('\u0000');
  if (nul !== -1) return `must not contain NUL characters; the first is at index ${nul}`;
  if (text.isWellFormed()) return undefined;
  for (let position = 0; position < text.length; position += 1) {
    const unit = text.charCodeAt(position);
    const isHigh = unit >= 0xd800 && unit <= 0xdbff;
    const next = text.charCodeAt(position + 1);
    if (isHigh && next >= 0xdc00 && next <= 0xdfff) {
      position += 1;
    } else if (isHigh || (unit >= 0xdc00 && unit <= 0xdfff)) {
      return `must be well-formed Unicode; a lone surrogate is at index ${position}`;
    }
  }
  return undefined;
}

/** Returns the message of any thrown value, Error or not. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === 'string' ? error : describeValue(error);
}

/** SQLSTATE of "out of shared memory", which PostgreSQL raises when its shared lock table is full. */
const OUT_OF_SHARED_MEMORY = '53200';

/** Returns whether a database error means the server ran out of shared memory, usually of lock table entries. */
export function isOutOfSharedMemory(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === OUT_OF_SHARED_MEMORY;
}
