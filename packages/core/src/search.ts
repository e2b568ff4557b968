import { isIP } from 'node:net';
import { sql, type Kysely, type RawBuilder } from 'kysely';
import { selectDisplay } from './cache-rows.js';
import { validateInteger } from './drain.js';
import { describeValue, findTextProblem, SearchOutboxError, ValidationError } from './errors.js';
import { assertIdentifier, table } from './identifiers.js';
import type { IndexRegistry } from './indexes.js';
import type { Logger } from './logger.js';
import { CACHE_TABLE, INDEXED_VALUE_PREFIX } from './migrations.js';

/**
 * Lookups: `partial` is a case-insensitive substring match, `exact`,
 * `startswith` and `endswith` are case-insensitive too, and `regex` is a
 * case-insensitive PostgreSQL regular expression.
 */
export type Lookup = 'partial' | 'exact' | 'startswith' | 'endswith' | 'regex';

export const LOOKUPS: readonly Lookup[] = ['partial', 'exact', 'startswith', 'endswith', 'regex'];

export interface SearchOptions {
  /** The text to look for. 1 to 500 characters after trimming. */
  readonly query: string;
  /** Default: `partial`. */
  readonly lookup?: Lookup;
  /** Only objects of these declared types. Default: all types. */
  readonly objectTypes?: readonly string[];
  /** Objects returned. Integer from 1 to 1000. Default: 50. */
  readonly limit?: number;
  /** Schema of the cache. Default: `public`. */
  readonly schema?: string;
  /**
   * Statement timeout of the search, in milliseconds, which bounds costly
   * regular expressions. A search that exceeds it fails with a ValidationError
   * for a regex lookup, and with a SearchOutboxError otherwise. Default: 5000.
   */
  readonly timeoutMs?: number;
}

export interface SearchResult {
  readonly objectType: string;
  readonly objectId: string;
  /** The field of the object's best (lowest weight) match. */
  readonly field: string;
  readonly type: string;
  readonly value: string;
  readonly weight: number;
  /** Display attributes read from the live object; empty when the object or its type is gone. */
  readonly display: Readonly<Record<string, string | null>>;
}

export const MAX_QUERY_LENGTH = 500;
/** Matching cache rows considered, best weights first, before picking one per object. */
export const MAX_MATCHED_ROWS = 1000;

/** SQLSTATE of an invalid regular expression. */
const INVALID_REGULAR_EXPRESSION = '2201B';
/** SQLSTATE of a cancelled statement, which a statement timeout raises too. */
const QUERY_CANCELED = '57014';
/** SQLSTATE of a missing table. */
const UNDEFINED_TABLE = '42P01';

/**
 * Finds cache rows matching the query, keeps each object's best match and
 * returns objects ranked by weight (lower first), with display attributes.
 */
export async function searchCache(
  db: Kysely<any>,
  registry: IndexRegistry,
  options: SearchOptions,
  logger: Logger,
): Promise<SearchResult[]> {
  const search = validateSearch(registry, options);
  try {
    return await runSearch(db, registry, search, logger);
  } catch (error) {
    throw explainSearchError(error, search);
  }
}

async function runSearch(
  db: Kysely<any>,
  registry: IndexRegistry,
  { query, lookup, objectTypes, limit, schema, timeoutMs }: ValidatedSearch,
  logger: Logger,
): Promise<SearchResult[]> {
  return db.transaction().execute(async (trx) => {
    // SET LOCAL takes no parameters; the value is an integer validated above.
    await sql`SET LOCAL statement_timeout = ${sql.lit(timeoutMs)}`.execute(trx);
    if (lookup === 'regex') await assertValidRegex(trx, query);

    const typeFilter = objectTypes === null ? sql`TRUE` : sql`object_type = ANY(${objectTypes}::text[])`;
    const matches = await sql<{
      object_type: string;
      object_id: string;
      field: string;
      type: string;
      value: string;
      weight: number;
    }>`
      WITH matches AS (
        SELECT object_type, object_id, field, type, value, weight
        FROM ${table(schema, CACHE_TABLE)}
        WHERE (${matchCondition(query, lookup)}) AND ${typeFilter}
        ORDER BY weight, object_type, object_id, field
        LIMIT ${MAX_MATCHED_ROWS}
      ), best AS (
        SELECT DISTINCT ON (object_type, object_id) *
        FROM matches
        ORDER BY object_type, object_id, weight, field
      )
      SELECT * FROM best ORDER BY weight, object_type, object_id LIMIT ${limit}
    `.execute(trx);

    const displays = await readDisplays(trx, registry, schema, matches.rows, logger);
    return matches.rows.map((row) => ({
      objectType: row.object_type,
      objectId: row.object_id,
      field: row.field,
      type: row.type,
      value: row.value,
      weight: row.weight,
      display: displays.get(`${row.object_type}\u001f${row.object_id}`) ?? {},
    }));
  });
}

/**
 * Replaces the database errors that a caller's input can cause with errors
 * that name the input: a statement timeout, and a cache schema without a
 * cache table. Other errors are returned unchanged.
 */
function explainSearchError(error: unknown, search: ValidatedSearch): unknown {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  const message = error instanceof Error ? error.message : '';
  if (code === QUERY_CANCELED && message.includes('statement timeout')) {
    const timedOut = `timed out after ${search.timeoutMs} ms (the statement timeout set by timeoutMs)`;
    // A costly regular expression is the caller's input to fix. Other lookups
    // that time out point at the load or the size of the cache instead.
    if (search.lookup === 'regex') {
      return new ValidationError(
        'query',
        search.query,
        `is too costly to match: the regex search ${timedOut}; use a simpler pattern, for example one without backreferences, or raise timeoutMs`,
        { cause: error },
      );
    }
    return new SearchOutboxError(
      `Search for ${describeValue(search.query)} (lookup ${search.lookup}) ${timedOut}; raise timeoutMs or narrow the search with objectTypes`,
      { cause: error },
    );
  }
  if (code === UNDEFINED_TABLE && message.includes(CACHE_TABLE)) {
    return new SearchOutboxError(
      `Schema "${search.schema}" has no ${CACHE_TABLE} table; run migrations with this schema among the cache schemas, or pass another schema to search`,
      { cause: error },
    );
  }
  return error;
}

type ValidatedSearch = ReturnType<typeof validateSearch>;

function validateSearch(registry: IndexRegistry, options: SearchOptions) {
  if (typeof options !== 'object' || options === null) {
    throw new ValidationError('search options', options, 'must be an object with at least a query');
  }
  const raw = options.query;
  if (typeof raw !== 'string') throw new ValidationError('query', raw, 'must be a string');
  const textProblem = findTextProblem(raw);
  if (textProblem !== undefined) throw new ValidationError('query', raw, textProblem);
  const query = raw.trim();
  if (query.length === 0) throw new ValidationError('query', raw, 'must not be empty');
  if (query.length > MAX_QUERY_LENGTH) {
    throw new ValidationError('query', raw, `must be at most ${MAX_QUERY_LENGTH} characters long`);
  }

  const lookup = options.lookup ?? 'partial';
  if (!LOOKUPS.includes(lookup)) {
    throw new ValidationError('lookup', lookup, `must be one of ${LOOKUPS.join(', ')}`);
  }
  let objectTypes: string[] | null = null;
  if (options.objectTypes !== undefined) {
    if (!Array.isArray(options.objectTypes)) {
      throw new ValidationError('objectTypes', options.objectTypes, 'must be an array of object types');
    }
    objectTypes = options.objectTypes.map((type, position) => registry.get(type, `objectTypes[${position}]`).objectType);
  }
  const limit = validateInteger('limit', options.limit ?? 50, 1, 1000);
  const schema = assertIdentifier('schema', options.schema ?? 'public');
  const timeoutMs = validateInteger('timeoutMs', options.timeoutMs ?? 5000, 1, 600_000);
  return { query, lookup, objectTypes, limit, schema, timeoutMs };
}

/** Escapes LIKE wildcards so `%`, `_` and `\` in a query match themselves. */
export function escapeLike(text: string): string {
  return text.replace(/[\\%_]/g, (character) => `\\${character}`);
}

function matchCondition(query: string, lookup: Lookup): RawBuilder<unknown> {
  const escaped = escapeLike(query);
  let condition: RawBuilder<unknown>;
  switch (lookup) {
    case 'partial':
      condition = sql`value ILIKE ${`%${escaped}%`}`;
      break;
    // The first condition matches the btree index on the value's first
    // characters; the second checks the whole value. Both lower the query in
    // PostgreSQL, so that every lookup folds case the same way.
    case 'exact':
      condition = sql`lower(left(value, ${sql.lit(INDEXED_VALUE_PREFIX)})) = lower(${query}) AND lower(value) = lower(${query})`;
      break;
    case 'startswith':
      condition = sql`lower(left(value, ${sql.lit(INDEXED_VALUE_PREFIX)})) LIKE (lower(${escaped}) || '%')
        AND lower(value) LIKE (lower(${escaped}) || '%')`;
      break;
    case 'endswith':
      condition = sql`value ILIKE ${`%${escaped}`}`;
      break;
    case 'regex':
      condition = sql`value ~* ${query}`;
      break;
  }

  const address = parseIpAddress(query);
  if (address === undefined || lookup === 'regex') return condition;
  // These expressions repeat the cache's IP indexes, so the planner uses them
  // and no value of another type is ever cast to inet.
  const hostMatch = sql`(type = 'inet' AND (CASE WHEN type = 'inet' THEN host(value::inet) END) = host(${address}::inet))`;
  if (lookup !== 'partial') return sql`${condition} OR ${hostMatch}`;
  const containingPrefix = sql`(type = 'cidr' AND (CASE WHEN type = 'cidr' THEN value::cidr END) >>= ${address}::inet)`;
  return sql`${condition} OR ${hostMatch} OR ${containingPrefix}`;
}

/** Returns the address of a query such as `10.0.0.1`, `10.0.0.1/24` or `2001:db8::1`, or undefined. */
function parseIpAddress(query: string): string | undefined {
  // Node accepts IPv6 zone ids (fe80::1%eth0), which PostgreSQL's inet rejects.
  if (query.includes('%')) return undefined;
  const slash = query.indexOf('/');
  const host = slash === -1 ? query : query.slice(0, slash);
  if (slash !== -1) {
    const length = query.slice(slash + 1);
    const max = isIP(host) === 6 ? 128 : 32;
    if (!/^\d{1,3}$/.test(length) || Number(length) > max) return undefined;
  }
  return isIP(host) === 0 ? undefined : host;
}

async function assertValidRegex(executor: Kysely<any>, pattern: string): Promise<void> {
  try {
    await sql`SELECT '' ~* ${pattern}`.execute(executor);
  } catch (error) {
    if ((error as { code?: unknown }).code === INVALID_REGULAR_EXPRESSION) {
      throw new ValidationError('query', pattern, `is not a valid regular expression: ${(error as Error).message}`, {
        cause: error,
      });
    }
    throw error;
  }
}

async function readDisplays(
  executor: Kysely<any>,
  registry: IndexRegistry,
  schema: string,
  rows: readonly { object_type: string; object_id: string }[],
  logger: Logger,
): Promise<Map<string, Record<string, string | null>>> {
  const idsByType = new Map<string, string[]>();
  for (const row of rows) {
    const index = registry.find(row.object_type);
    if (index === undefined || index.display.length === 0) continue;
    const ids = idsByType.get(row.object_type) ?? [];
    ids.push(row.object_id);
    idsByType.set(row.object_type, ids);
  }
  const displays = new Map<string, Record<string, string | null>>();
  if (idsByType.size === 0) return displays;

  const selects = [...idsByType].map(
    ([objectType, ids]) => sql`(${selectDisplay(schema, registry.get(objectType), ids)})`,
  );
  // Display attributes are a courtesy: when a source table is gone or a
  // stale cache row contains an id of the wrong form, the results are still
  // returned, without display attributes.
  await sql`SAVEPOINT search_outbox_display`.execute(executor);
  try {
    const result = await sql<{ object_type: string; object_id: string; display: Record<string, string | null> }>`
      ${sql.join(selects, sql` UNION ALL `)}
    `.execute(executor);
    await sql`RELEASE SAVEPOINT search_outbox_display`.execute(executor);
    for (const row of result.rows) displays.set(`${row.object_type}\u001f${row.object_id}`, row.display);
  } catch (error) {
    await sql`ROLLBACK TO SAVEPOINT search_outbox_display`.execute(executor);
    logger.warn('could not read display attributes of search results', {
      schema,
      objectTypes: [...idsByType.keys()],
      error: error instanceof Error ? error.message : String(error),
    });
  }
  return displays;
}
