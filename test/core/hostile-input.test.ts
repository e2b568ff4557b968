import {
  createSearchOutbox,
  defineIndexes,
  IndexDeclarationError,
  MAX_IDS_PER_MARK,
  SearchOutboxError,
  UnknownObjectTypeError,
  ValidationError,
  type Lookup,
  type SearchIndex,
  type SearchOutbox,
} from '@search-outbox/core';
import {
  createDrainerHandlers,
  createLambdaContext,
  ForwardingLogger,
  ForwardingMetrics,
  NUDGE_KIND,
  readDrainerConfig,
  type DrainerHandlers,
} from '@search-outbox/lambda';
import type { SQSEvent, SQSRecord } from 'aws-lambda';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES, insertSites } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';

const MB = 1024 * 1024;
const MEGABYTE_STRING = 'x'.repeat(MB);
/** How describeValue shows MEGABYTE_STRING in a message: its first 80 characters and its length. */
const MEGABYTE_SHOWN = `"${'x'.repeat(80)}... (${MB} characters)"`;
/** Upper bound of a message that shows a shortened 1 MB value. */
const SHORT_MESSAGE = 600;

const JSON_KEY = `it's "quoted"; DROP TABLE site; --`;
const TAG_SLUG = `it's; --%_\\`;

/**
 * Declarations whose names are SQL reserved words and whose JSON key and
 * filter value contain quotes and comment markers: valid, so they must be
 * quoted and bound as parameters, never spliced into SQL.
 */
const HOSTILE_BUT_VALID_INDEXES: readonly SearchIndex[] = [
  {
    objectType: 'extras.tag',
    table: 'tag',
    primaryKey: 'slug',
    keyType: 'text',
    fields: [{ name: 'name', weight: 100 }],
  },
  {
    objectType: 'shop.order',
    table: 'order',
    primaryKey: 'user',
    keyType: 'integer',
    fields: [
      { name: 'select', weight: 100 },
      { name: 'note', weight: 200, source: { json: { column: 'data', key: JSON_KEY } } },
    ],
    where: { group: "O'Brien; --" },
  },
];
const INDEXES = [...FIXTURE_INDEXES, ...HOSTILE_BUT_VALID_INDEXES];

const SITE: SearchIndex = { objectType: 'dcim.site', table: 'site', fields: [{ name: 'name', weight: 100 }] };

/** Site names with LIKE wildcards, regex metacharacters and quotes, by site id. */
const METACHARACTER_SITES: readonly [number, string][] = [
  [101, '50%_off [promo]'],
  [102, 'a.b*c+d?'],
  [103, 'aXbbbc+d?'],
  [104, '(x|y)^$'],
  [105, 'back\\slash{2}'],
  [106, `O'Brien "quoted"; --`],
];
const IP_LIKE_TEXT = '999.1.1.1 1.2.3 ::gg 10.0.0.0/33 1.2.3.4/abc 010.1.2.3 10.1.2.3/-1 2001:db8::1/129 1.2.3.4.5 0x0a.1.2.3';
/** A value of 301 x's, on which a pattern with five backreferences backtracks for minutes. */
const BACKTRACKING_SITE = 108;
const MEGABYTE_SITE = 109;

let database: TestDatabase;
let logged: Kysely<any>;
let outbox: SearchOutbox;
/** SQL statements that `logged` sent, failed ones included, since the last reset. */
const statements: string[] = [];

beforeAll(async () => {
  database = await createTestDatabase('hostile_input');
  logged = new Kysely<any>({
    dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url, max: 2 }) }),
    log: (event) => {
      statements.push(event.query.sql);
    },
  });
  outbox = createSearchOutbox({ db: logged, indexes: INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
  await sql`
    CREATE TABLE tag (slug text PRIMARY KEY, name text NOT NULL);
    CREATE TABLE "order" ("user" integer PRIMARY KEY, "select" text, data jsonb, "group" text);
  `.execute(database.db);

  await outbox.transaction(async (trx) => {
    await insertSites(trx, [
      ...METACHARACTER_SITES.map(([id, name]) => ({ id, name })),
      { id: 107, name: 'IP-like Text Site', description: `Mentions ${IP_LIKE_TEXT}` },
      { id: BACKTRACKING_SITE, name: 'x'.repeat(301) },
      { id: MEGABYTE_SITE, name: 'Megabyte Site', description: `${'%_'.repeat(MB / 2)}needle.*` },
    ]);
    await sql`
      INSERT INTO ip_address (id, address, dns_name) VALUES (1, '10.1.2.3/24', NULL);
      INSERT INTO prefix (id, prefix, description) VALUES (1, '10.0.0.0/8', NULL);
    `.execute(trx);
    await sql`INSERT INTO tag (slug, name) VALUES (${TAG_SLUG}, 'Quoted Tag')`.execute(trx);
    const data = JSON.stringify({ [JSON_KEY]: 'json needle' });
    await sql`
      INSERT INTO "order" ("user", "select", data, "group") VALUES
        (1, 'select * from users', ${data}, 'O''Brien; --'), (2, 'filtered out', ${data}, 'other')
    `.execute(trx);
    await outbox.mark(trx, 'dcim.site', [...METACHARACTER_SITES.map(([id]) => id), 107, BACKTRACKING_SITE, MEGABYTE_SITE]);
    await outbox.mark(trx, 'ipam.ipaddress', 1);
    await outbox.mark(trx, 'ipam.prefix', 1);
    await outbox.mark(trx, 'extras.tag', TAG_SLUG);
    await outbox.mark(trx, 'shop.order', [1, 2]);
  });
  const summary = await outbox.drain();
  expect(summary.failed).toBe(0);
});

afterAll(async () => {
  await logged?.destroy();
  await database?.destroy();
});

interface Snapshot {
  readonly outbox: string[];
  readonly cache: { rows: string; digest: string };
  readonly relations: string[];
}

/** Reads the outbox rows, a digest of the cache and the list of schemas and tables. */
async function snapshot(): Promise<Snapshot> {
  const outboxRows = await sql<{ line: string }>`
    SELECT concat_ws('|', id, target_schema, object_type, object_id, operation, state, attempts) AS line
    FROM search_outbox.outbox ORDER BY id
  `.execute(database.db);
  const cache = await sql<{ rows: string; digest: string }>`
    SELECT count(*) AS rows,
           md5(string_agg(concat_ws('|', object_type, object_id, field, type, md5(value), weight), ',' ORDER BY
             object_type, object_id, field)) AS digest
    FROM search_cache
  `.execute(database.db);
  const relations = await sql<{ name: string }>`
    SELECT n.nspname || '.' || coalesce(c.relname, '') AS name
    FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
    WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
    ORDER BY 1
  `.execute(database.db);
  return {
    outbox: outboxRows.rows.map((row) => row.line),
    cache: cache.rows[0] ?? { rows: '0', digest: '' },
    relations: relations.rows.map((row) => row.name),
  };
}

/**
 * Runs `attempt`, expects it to fail, and checks that the database is
 * unchanged. With `sqlRuns: false` (the default) it also checks that the
 * attempt sent no statement: the input was rejected before any SQL.
 * Returns the error for further checks.
 */
async function expectRejected(attempt: () => unknown, options: { sqlRuns?: boolean } = {}): Promise<Error> {
  const before = await snapshot();
  statements.length = 0;
  const outcome = await Promise.resolve()
    .then(attempt)
    .then(
      (value) => ({ failed: false as const, value }),
      (error: unknown) => ({ failed: true as const, error }),
    );
  const sent = [...statements];

  expect(outcome.failed, 'the attempt should have failed').toBe(true);
  if (options.sqlRuns !== true) expect(sent).toEqual([]);
  expect(await snapshot()).toEqual(before);
  const error = (outcome as { error: unknown }).error;
  expect(error).toBeInstanceOf(Error);
  return error as Error;
}

function ids(results: readonly { objectType: string; objectId: string }[]): string[] {
  return results.map((result) => `${result.objectType}:${result.objectId}`);
}

describe('search input validation', () => {
  test.each([
    ['a NUL byte', 'ab\u0000c', 'Invalid query: "ab\\u0000c" must not contain NUL characters; the first is at index 2'],
    [
      'a NUL byte after 1 MB',
      `${MEGABYTE_STRING}\u0000`,
      `Invalid query: "${'x'.repeat(80)}... (${MB + 1} characters)" must not contain NUL characters; the first is at index ${MB}`,
    ],
    ['a lone high surrogate', 'ab\ud800', 'Invalid query: "ab\\ud800" must be well-formed Unicode; a lone surrogate is at index 2'],
    ['a lone low surrogate', '\udc00ab', 'Invalid query: "\\udc00ab" must be well-formed Unicode; a lone surrogate is at index 0'],
    ['a reversed surrogate pair', '\u{1F600}\udc00\ud800', 'a lone surrogate is at index 2'],
    ['a 1 MB query', MEGABYTE_STRING, `Invalid query: ${MEGABYTE_SHOWN} must be at most 500 characters long`],
    ['1 MB of spaces', ' '.repeat(MB), 'must not be empty'],
  ])('rejects %s before any SQL', async (_label, query, message) => {
    const error = await expectRejected(() => outbox.search({ query }));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toContain(message);
    expect(error.message.length).toBeLessThan(SHORT_MESSAGE);
  });

  test.each([
    ['null options', null, 'Invalid search options: null must be an object with at least a query'],
    ['a string as options', 'router', 'Invalid search options: "router" must be an object'],
    ['no query', {}, 'Invalid query: undefined must be a string'],
    ['an array query', { query: ['a'] }, 'Invalid query: ["a"] must be a string'],
    ['a Symbol query', { query: Symbol('q') }, 'Invalid query: Symbol(q) must be a string'],
    ['a numeric lookup', { query: 'a', lookup: 5 }, 'Invalid lookup: 5 must be one of partial, exact, startswith, endswith, regex'],
    ['a lookup in capitals', { query: 'a', lookup: 'PARTIAL' }, 'Invalid lookup: "PARTIAL" must be one of'],
    ['a lookup array', { query: 'a', lookup: ['regex'] }, 'Invalid lookup: ["regex"] must be one of'],
    ['a string limit', { query: 'a', limit: '10' }, 'Invalid limit: "10" must be an integer from 1 to 1000'],
    ['a fractional limit', { query: 'a', limit: 1.5 }, 'Invalid limit: 1.5 must be an integer from 1 to 1000'],
    ['a NaN limit', { query: 'a', limit: Number.NaN }, 'Invalid limit: NaN must be an integer'],
    ['an infinite limit', { query: 'a', limit: Number.POSITIVE_INFINITY }, 'Invalid limit: Infinity must be an integer'],
    ['a negative limit', { query: 'a', limit: -1 }, 'Invalid limit: -1 must be an integer'],
    ['a limit above the maximum', { query: 'a', limit: 1001 }, 'Invalid limit: 1001 must be an integer from 1 to 1000'],
    ['a bigint limit', { query: 'a', limit: 10n }, 'Invalid limit: 10n must be an integer'],
    ['a string of types', { query: 'a', objectTypes: 'dcim.site' }, 'Invalid objectTypes: "dcim.site" must be an array of object types'],
    ['a numeric type', { query: 'a', objectTypes: [5] }, 'Invalid objectTypes[0]: 5 is not a declared object type'],
    ['a null type', { query: 'a', objectTypes: ['dcim.site', null] }, 'Invalid objectTypes[1]: null is not a declared object type'],
    [
      'an injected type',
      { query: 'a', objectTypes: ["dcim.site'; DROP TABLE site; --"] },
      `Invalid objectTypes[0]: "dcim.site'; DROP TABLE site; --" is not a declared object type`,
    ],
    ['a zero timeout', { query: 'a', timeoutMs: 0 }, 'Invalid timeoutMs: 0 must be an integer from 1 to 600000'],
    ['a string timeout', { query: 'a', timeoutMs: '100' }, 'Invalid timeoutMs: "100" must be an integer'],
    ['a timeout above the maximum', { query: 'a', timeoutMs: 600_001 }, 'Invalid timeoutMs: 600001 must be an integer'],
  ])('rejects %s before any SQL', async (_label, options, message) => {
    const error = await expectRejected(() => outbox.search(options as never));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toContain(message);
  });

  test.each([
    ['an injected schema', 'public; DROP TABLE site', '"public; DROP TABLE site"'],
    ['a quoted schema', '"public"', '"\\"public\\""'],
    ['a qualified name', 'public.search_cache', '"public.search_cache"'],
    ['a schema with a space', 'pub lic', '"pub lic"'],
    ['an empty schema', '', '""'],
    ['a 64-character schema', 's'.repeat(64), `"${'s'.repeat(64)}"`],
    ['a non-ASCII schema', 'naïve', '"naïve"'],
    ['a numeric schema', 5, '5'],
    ['a 1 MB schema', MEGABYTE_STRING, MEGABYTE_SHOWN],
  ])('rejects %s before any SQL', async (_label, schema, shown) => {
    const error = await expectRejected(() => outbox.search({ query: 'a', schema: schema as string }));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toBe(
      `Invalid schema: ${shown} is not a valid identifier; use a letter or underscore followed by letters, digits or underscores (at most 63)`,
    );
  });

  test('names a schema without a cache', async () => {
    const schema = 's'.repeat(63);
    const error = await expectRejected(() => outbox.search({ query: 'a', schema }), { sqlRuns: true });

    expect(error).toBeInstanceOf(SearchOutboxError);
    expect(error.message).toBe(
      `Schema "${schema}" has no search_cache table; run migrations with this schema among the cache schemas, or pass another schema to search`,
    );
  });
});

describe('search matching of hostile text', () => {
  test.each(METACHARACTER_SITES.filter(([id]) => id !== 103))(
    'matches site %i literally in every lookup',
    async (id, name) => {
      const cases: [Lookup, string][] = [
        ['partial', name.slice(1, -1)],
        ['exact', name.toUpperCase()],
        ['startswith', name.slice(0, -1)],
        ['endswith', name.slice(1)],
      ];
      for (const [lookup, query] of cases) {
        expect(ids(await outbox.search({ query, lookup, objectTypes: ['dcim.site'] })), `${lookup} ${query}`).toEqual([
          `dcim.site:${id}`,
        ]);
      }
    },
  );

  test('treats regex metacharacters as regex only in regex lookups', async () => {
    expect(ids(await outbox.search({ query: 'a.b*c' }))).toEqual(['dcim.site:102']);
    expect(ids(await outbox.search({ query: '^a.b*c', lookup: 'regex' }))).toEqual(['dcim.site:103']);
    expect(ids(await outbox.search({ query: '^a\\.b\\*c', lookup: 'regex' }))).toEqual(['dcim.site:102']);
    expect(ids(await outbox.search({ query: '.*' }))).toEqual([`dcim.site:${MEGABYTE_SITE}`]);
    expect(await outbox.search({ query: '^', lookup: 'startswith' })).toEqual([]);
  });

  test('finds a 1 MB value of LIKE wildcards', async () => {
    expect(ids(await outbox.search({ query: 'needle.*' }))).toEqual([`dcim.site:${MEGABYTE_SITE}`]);
    expect(ids(await outbox.search({ query: '%_needle.*', lookup: 'endswith' }))).toEqual([`dcim.site:${MEGABYTE_SITE}`]);
    expect(ids(await outbox.search({ query: '%_%_%_', lookup: 'startswith' }))).toEqual([`dcim.site:${MEGABYTE_SITE}`]);
  });

  test.each(['999.1.1.1', '1.2.3', '::gg', '10.0.0.0/33', '1.2.3.4/abc', '010.1.2.3', '10.1.2.3/', '10.1.2.3/-1', '2001:db8::1/129', '1.2.3.4.5', '0x0a.1.2.3'])(
    'matches the IP-like string %s as text only',
    async (query) => {
      const folded = query.toLowerCase();
      const matchesText: Record<Lookup, (value: string) => boolean> = {
        partial: (value) => value.includes(folded),
        exact: (value) => value === folded,
        startswith: (value) => value.startsWith(folded),
        endswith: (value) => value.endsWith(folded),
        regex: () => true,
      };
      for (const lookup of ['partial', 'exact', 'startswith', 'endswith'] as const) {
        const results = await outbox.search({ query, lookup });
        for (const result of results) {
          expect(matchesText[lookup](result.value.toLowerCase()), `${lookup} found ${result.value}`).toBe(true);
        }
        if (lookup === 'partial') expect(ids(results)).toContain('dcim.site:107');
      }
    },
  );
});

describe('costly and invalid regular expressions', () => {
  test('stops a backtracking regex at the statement timeout', async () => {
    const pattern = '^(x*)(x*)(x*)(x*)(x*)\\1\\2\\3\\4\\5$';
    const error = await expectRejected(
      () => outbox.search({ query: pattern, lookup: 'regex', objectTypes: ['dcim.site'], timeoutMs: 100 }),
      { sqlRuns: true },
    );

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toBe(
      `Invalid query: ${JSON.stringify(pattern)} is too costly to match: the regex search timed out after 100 ms (the statement timeout set by timeoutMs); use a simpler pattern, for example one without backreferences, or raise timeoutMs`,
    );
    expect(ids(await outbox.search({ query: '^(x{100}){3}x$', lookup: 'regex' }))).toEqual([`dcim.site:${BACKTRACKING_SITE}`]);
  });

  test('names the timeout of a search that waits on a lock', async () => {
    const locker = await database.db.startTransaction().execute();
    try {
      await sql`LOCK TABLE search_cache IN ACCESS EXCLUSIVE MODE`.execute(locker);
      const attempt = outbox.search({ query: 'Quoted', timeoutMs: 50 });

      await expect(attempt).rejects.toThrow(SearchOutboxError);
      await expect(attempt).rejects.not.toThrow(ValidationError);
      await expect(attempt).rejects.toThrow(
        'Search for "Quoted" (lookup partial) timed out after 50 ms (the statement timeout set by timeoutMs); raise timeoutMs or narrow the search with objectTypes',
      );
    } finally {
      await locker.rollback().execute();
    }
  });

  test.each([
    ['an unbalanced bracket', '[', 'brackets [] not balanced'],
    ['a trailing backslash', '\\', 'invalid escape \\ sequence'],
    ['a reversed repetition', 'x{3,2}', 'invalid repetition count(s)'],
    ['a missing group', '\\1', 'invalid backreference number'],
    ['a nested quantifier', 'a**', 'quantifier operand invalid'],
    ['an oversized program', '((((a{1,100}){1,100}){1,100}){1,100})', 'regular expression is too complex'],
  ])('rejects %s as an invalid regex', async (_label, pattern, reason) => {
    const error = await expectRejected(() => outbox.search({ query: pattern, lookup: 'regex' }), { sqlRuns: true });

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toContain(`Invalid query: ${JSON.stringify(pattern)} is not a valid regular expression`);
    expect(error.message).toContain(reason);
  });
});

describe('mark input validation', () => {
  const sparse = [1, 2, 3];
  delete sparse[1];

  test.each([
    ['a NUL byte in a text id', 'extras.tag', 'ab\u0000', 'Invalid id: "ab\\u0000" must not contain NUL characters; the first is at index 2'],
    ['a NUL byte in a bigint id', 'dcim.site', '1\u0000', 'Invalid id: "1\\u0000" must not contain NUL characters'],
    ['a lone surrogate', 'extras.tag', 'tag\ud83d', 'Invalid id: "tag\\ud83d" must be well-formed Unicode; a lone surrogate is at index 3'],
    ['a lone low surrogate', 'extras.tag', '\udc00', 'Invalid id: "\\udc00" must be well-formed Unicode; a lone surrogate is at index 0'],
    ['a 1 MB id', 'extras.tag', MEGABYTE_STRING, `Invalid id: ${MEGABYTE_SHOWN} must be 1 to 255 characters long`],
    ['an empty id', 'extras.tag', '', 'Invalid id: "" must be 1 to 255 characters long'],
    ['null', 'dcim.site', null, 'Invalid id: null must be a string, an integer or a bigint'],
    ['undefined', 'dcim.site', undefined, 'Invalid id: undefined must be a string, an integer or a bigint'],
    ['a boolean', 'dcim.site', true, 'Invalid id: true must be a string'],
    ['a Symbol', 'dcim.site', Symbol('id'), 'Invalid id: Symbol(id) must be a string'],
    ['a function', 'dcim.site', () => 1, 'Invalid id: a function must be a string'],
    ['a Date', 'dcim.site', new Date(0), 'Invalid id: a Date (1970-01-01T00:00:00.000Z) must be a string'],
    ['Infinity', 'dcim.site', Number.POSITIVE_INFINITY, 'Invalid id: Infinity must be a safe integer or a string'],
    ['an unsafe integer', 'dcim.site', 2 ** 53, 'Invalid id: 9007199254740992 must be a safe integer or a string'],
    [
      'a bigint beyond the key range',
      'dcim.site',
      2n ** 63n,
      'Invalid id: 9223372036854775808n must be an integer from -9223372036854775808 to 9223372036854775807 (key type bigint)',
    ],
    ['an injected bigint id', 'dcim.site', '1 OR 1=1', 'Invalid id: "1 OR 1=1" must be an integer from'],
    ['a hexadecimal id', 'dcim.site', '0x10', 'Invalid id: "0x10" must be an integer from'],
    ['a nested array', 'dcim.site', [[1, 2]], 'Invalid id: [1,2] must be a string, an integer or a bigint'],
    ['a Set of ids', 'dcim.site', new Set([1, 2]), 'Invalid id: a Set of 2 values must be a string, an integer or a bigint'],
    ['a hole in a sparse array', 'dcim.site', sparse, 'Invalid ids[1]: undefined must be a string, an integer or a bigint'],
    [
      'more ids than the maximum',
      'dcim.site',
      Array.from({ length: MAX_IDS_PER_MARK + 1 }, (_, position) => position + 1),
      `Invalid ids: ${MAX_IDS_PER_MARK + 1} is the number of ids given, above the maximum of ${MAX_IDS_PER_MARK} per mark call; split them into several calls`,
    ],
    [
      'a bad id after the maximum of good ones',
      'dcim.site',
      [...Array.from({ length: MAX_IDS_PER_MARK - 1 }, (_, position) => position + 1), 'x'],
      `Invalid ids[${MAX_IDS_PER_MARK - 1}]: "x" must be an integer from`,
    ],
  ])('rejects %s before any SQL', async (_label, objectType, id, message) => {
    for (const method of ['mark', 'markDeleted'] as const) {
      const error = await expectRejected(() => outbox[method](logged, objectType, id as never));

      expect(error, method).toBeInstanceOf(ValidationError);
      expect(error.message, method).toContain(message);
      expect(error.message.length, method).toBeLessThan(SHORT_MESSAGE);
    }
  });

  test.each([
    ['an injected type', "dcim.site'; DROP TABLE site; --", `"dcim.site'; DROP TABLE site; --"`],
    ['a type in capitals', 'DCIM.SITE', '"DCIM.SITE"'],
    ['a padded type', ' dcim.site', '" dcim.site"'],
    ['a type with a NUL byte', 'dcim.site\u0000', '"dcim.site\\u0000"'],
    ['a prototype key', '__proto__', '"__proto__"'],
    ['an Object method name', 'constructor', '"constructor"'],
    ['a 1 MB type', MEGABYTE_STRING, MEGABYTE_SHOWN],
    ['a numeric type', 5, '5'],
    ['a null type', null, 'null'],
  ])('rejects %s as an unknown object type', async (_label, objectType, shown) => {
    const error = await expectRejected(() => outbox.mark(logged, objectType as string, 1));

    expect(error).toBeInstanceOf(UnknownObjectTypeError);
    expect(error.message).toBe(
      `Invalid objectType: ${shown} is not a declared object type; declared types are: ${INDEXES.map((index) => index.objectType).join(', ')}`,
    );
  });

  test.each([
    ['an empty schema', '', '""'],
    ['a quoted schema', 'a"b', '"a\\"b"'],
    ['an injected schema', 'public; DROP TABLE site', '"public; DROP TABLE site"'],
    ['a dotted schema', 'a.b', '"a.b"'],
    ['a 64-character schema', 's'.repeat(64), `"${'s'.repeat(64)}"`],
    ['a schema starting with a digit', '9lives', '"9lives"'],
    ['a numeric schema', 5, '5'],
    ['a null schema', null, 'null'],
  ])('rejects %s option before any SQL', async (_label, schema, shown) => {
    const error = await expectRejected(() => outbox.mark(logged, 'dcim.site', 1, { schema: schema as string }));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toBe(
      `Invalid schema: ${shown} is not a valid identifier; use a letter or underscore followed by letters, digits or underscores (at most 63)`,
    );
  });
});

describe('drain of hostile but valid values', () => {
  test('indexes a text id with quotes and wildcards', async () => {
    const [tag] = await outbox.search({ query: 'Quoted Tag', lookup: 'exact' });

    expect(tag).toMatchObject({ objectType: 'extras.tag', objectId: TAG_SLUG, field: 'name' });
  });

  test('quotes reserved words and binds a quoted JSON key', async () => {
    const results = await outbox.search({ query: 'json needle', objectTypes: ['shop.order'] });

    expect(results).toEqual([expect.objectContaining({ objectId: '1', field: 'note', value: 'json needle' })]);
    expect(ids(await outbox.search({ query: 'select * from', lookup: 'startswith' }))).toEqual(['shop.order:1']);
    expect(await outbox.search({ query: 'filtered out' })).toEqual([]);
  });
});

describe('index declaration validation', () => {
  const circular: Record<string, unknown> = {};
  circular.self = circular;

  /** Where an identifier sits in a declaration: its name in the message, the message prefix, and a builder. */
  const POSITIONS: readonly [string, string, (name: unknown) => unknown][] = [
    ['table', 'search index "dcim.site"', (name) => ({ ...SITE, table: name })],
    ['primaryKey', 'search index "dcim.site"', (name) => ({ ...SITE, primaryKey: name })],
    [
      'source column',
      'search index "dcim.site", field "name"',
      (name) => ({ ...SITE, fields: [{ name: 'name', weight: 1, source: { column: name } }] }),
    ],
    ...(['foreignKey', 'table', 'primaryKey', 'column'] as const).map(
      (key): [string, string, (name: unknown) => unknown] => [
        `related ${key}`,
        'search index "dcim.site", field "region"',
        (name) => ({
          ...SITE,
          fields: [{ name: 'region', weight: 1, source: { related: { foreignKey: 'region_id', table: 'region', [key]: name } } }],
        }),
      ],
    ),
    [
      'json column',
      'search index "dcim.site", field "cf"',
      (name) => ({ ...SITE, fields: [{ name: 'cf', weight: 1, source: { json: { column: name, key: 'code' } } }] }),
    ],
    [
      'source column',
      'search index "dcim.site", field "status"',
      (name) => ({ ...SITE, display: [{ name: 'status', source: { column: name } }] }),
    ],
  ];
  const UNSAFE_NAMES: readonly [string, unknown, string][] = [
    ['a double quote', 'a"b', '"a\\"b"'],
    ['a semicolon', 'site; DROP TABLE site', '"site; DROP TABLE site"'],
    ['a space', 'a b', '"a b"'],
    ['a dot', 'public.site', '"public.site"'],
    ['a comment marker', 'site--', '"site--"'],
    ['64 characters', 'n'.repeat(64), `"${'n'.repeat(64)}"`],
    ['an empty string', '', '""'],
    ['a leading digit', '1site', '"1site"'],
    ['a non-ASCII letter', 'sité', '"sité"'],
    ['1 MB', MEGABYTE_STRING, MEGABYTE_SHOWN],
    ['a number', 5, '5'],
    ['a bigint', 5n, '5n'],
    ['an object', { name: 'site' }, '{"name":"site"}'],
    ['a circular object', circular, '[object Object]'],
  ];

  test.each(POSITIONS)('reject an unsafe %s in %s', (what, prefix, build) => {
    for (const [label, name, shown] of UNSAFE_NAMES) {
      const declaration = build(name) as SearchIndex;
      let error: unknown;
      try {
        defineIndexes([declaration]);
      } catch (thrown) {
        error = thrown;
      }

      expect(error, label).toBeInstanceOf(IndexDeclarationError);
      expect((error as Error).message, label).toBe(
        `Invalid ${prefix}: ${what} ${shown} is not a valid identifier; use a letter or underscore followed by letters, digits or underscores (at most 63)`,
      );
    }
  });

  test('reject an unsafe where column', () => {
    for (const column of ['a"b', 'a; DROP TABLE site', 'a b', 'a.b', 'n'.repeat(64), '']) {
      expect(() => defineIndexes([{ ...SITE, where: { [column]: 1 } }]), column).toThrow(
        `Invalid search index "dcim.site": where column ${JSON.stringify(column)} is not a valid identifier`,
      );
    }
  });

  test('accept a 63-character identifier', () => {
    const name = 'n'.repeat(63);
    const registry = defineIndexes([{ ...SITE, table: name, primaryKey: name }]);

    expect(registry.get('dcim.site').table).toBe(name);
  });

  test.each([
    ['a bigint object type', { ...SITE, objectType: 5n }, 'Invalid search index "#0": objectType 5n must be dotted words'],
    ['a 1 MB object type', { ...SITE, objectType: MEGABYTE_STRING }, `Invalid search index "#0": objectType ${MEGABYTE_SHOWN} must be`],
    ['an injected object type', { ...SITE, objectType: 'dcim.site; --' }, 'objectType "dcim.site; --" must be dotted words'],
    ['a bigint key type', { ...SITE, keyType: 5n }, 'Invalid search index "dcim.site": keyType 5n must be one of bigint, integer, text, uuid'],
    ['a 1 MB key type', { ...SITE, keyType: MEGABYTE_STRING }, `keyType ${MEGABYTE_SHOWN} must be one of`],
    ['a bigint value type', { ...SITE, fields: [{ name: 'name', weight: 1, type: 5n }] }, 'field "name": type 5n must be one of str'],
    [
      'a bigint JSON key',
      { ...SITE, fields: [{ name: 'cf', weight: 1, source: { json: { column: 'data', key: 5n } } }] },
      'field "cf": json key 5n must be a non-empty string of at most 200 characters',
    ],
    [
      'a JSON key with a NUL byte',
      { ...SITE, fields: [{ name: 'cf', weight: 1, source: { json: { column: 'data', key: 'a\u0000' } } }] },
      'field "cf": json key "a\\u0000" must not contain NUL characters; the first is at index 1',
    ],
    [
      'a JSON key with a lone surrogate',
      { ...SITE, fields: [{ name: 'cf', weight: 1, source: { json: { column: 'data', key: '\ud800' } } }] },
      'field "cf": json key "\\ud800" must be well-formed Unicode; a lone surrogate is at index 0',
    ],
    [
      'a where value with a NUL byte',
      { ...SITE, where: { status: 'active\u0000' } },
      'where value "active\\u0000" for column "status" must not contain NUL characters; the first is at index 6',
    ],
    [
      'a where value with a lone surrogate',
      { ...SITE, where: { status: '\udfff' } },
      'where value "\\udfff" for column "status" must be well-formed Unicode; a lone surrogate is at index 0',
    ],
    [
      'a hole in the fields',
      { ...SITE, fields: [, { name: 'name', weight: 1 }] },
      'field "#0": a field must be an object with a name and a weight, not undefined',
    ],
    [
      'a hole in the display attributes',
      { ...SITE, display: [, 'status'] },
      'field "display #0": a display attribute must be a name or an object, not undefined',
    ],
  ])('reject %s', (_label, declaration, message) => {
    let error: unknown;
    try {
      defineIndexes([declaration as unknown as SearchIndex]);
    } catch (thrown) {
      error = thrown;
    }

    expect(error).toBeInstanceOf(IndexDeclarationError);
    expect((error as Error).message).toContain(message);
    expect((error as Error).message.length).toBeLessThan(SHORT_MESSAGE);
  });

  test('reject an unsafe declaration before any SQL', async () => {
    await expectRejected(() =>
      createSearchOutbox({ db: logged, indexes: [{ ...SITE, table: 'site; DROP TABLE site' }] }),
    );
  });
});

describe('outbox option validation', () => {
  const UNSAFE_SCHEMAS: readonly [unknown, string][] = [
    ['search_outbox"; DROP SCHEMA public CASCADE; --', '"search_outbox\\"; DROP SCHEMA public CASCADE; --"'],
    ['a b', '"a b"'],
    ['a.b', '"a.b"'],
    ['', '""'],
    ['o'.repeat(64), `"${'o'.repeat(64)}"`],
    [5, '5'],
  ];
  const identifierRule = 'is not a valid identifier; use a letter or underscore followed by letters, digits or underscores (at most 63)';

  test.each(UNSAFE_SCHEMAS)('rejects the outbox schema %s before any SQL', async (outboxSchema, shown) => {
    const error = await expectRejected(() =>
      createSearchOutbox({ db: logged, indexes: INDEXES, outboxSchema: outboxSchema as string }),
    );

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toBe(`Invalid outboxSchema: ${shown} ${identifierRule}`);
  });

  test.each([
    ['a logger string', { logger: 'console' }, 'Invalid logger: "console" must be an object with the methods debug, info, warn, error'],
    ['a logger without error', { logger: { debug() {}, info() {}, warn() {} } }, 'Invalid logger: {} must be an object with the methods debug, info, warn, error'],
    ['a retry string', { retry: 'often' }, 'Invalid retry: "often" must be an object with maxAttempts, backoffBaseMs or backoffMaxMs'],
    ['a retry array', { retry: [5] }, 'Invalid retry: [5] must be an object with maxAttempts, backoffBaseMs or backoffMaxMs'],
  ])('rejects %s as an outbox option', async (_label, extra, message) => {
    const error = await expectRejected(() => createSearchOutbox({ db: logged, indexes: INDEXES, ...(extra as object) }));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toBe(message);
  });

  test.each(UNSAFE_SCHEMAS)('rejects the cache schema %s before any SQL', async (schema, shown) => {
    const migrateError = await expectRejected(() => outbox.migrate({ cacheSchemas: ['public', schema as string] }));
    const rebuildError = await expectRejected(() => outbox.rebuild({ schema: schema as string }));
    const verifyError = await expectRejected(() => outbox.verify({ schema: schema as string }));

    expect(migrateError.message).toBe(`Invalid cacheSchemas[1]: ${shown} ${identifierRule}`);
    expect(rebuildError.message).toBe(`Invalid schema: ${shown} ${identifierRule}`);
    expect(verifyError.message).toBe(`Invalid schema: ${shown} ${identifierRule}`);
  });

  test.each([
    ['an injected transaction id', () => outbox.drain({ transactionIds: ['1; DROP TABLE site'] }), 'Invalid transactionIds[0]: "1; DROP TABLE site" must be a transaction id of 1 to 20 digits'],
    ['an injected retry type', () => outbox.retry({ objectType: "dcim.site' OR '1'='1" }), `Invalid objectType: "dcim.site' OR '1'='1" is not a declared object type`],
    ['a NUL byte in a retry id', () => outbox.retry({ objectType: 'extras.tag', objectIds: ['a\u0000'] }), 'Invalid id: "a\\u0000" must not contain NUL characters'],
    ['a rebuild type list as a string', () => outbox.rebuild({ objectTypes: 'dcim.site' as never }), 'Invalid objectTypes: "dcim.site" must be a non-empty array of declared object types'],
    ['a cache schema list as a string', () => outbox.migrate({ cacheSchemas: 'public' as never }), 'Invalid cacheSchemas: "public" must be a non-empty array of schema names'],
    ['an empty cache schema list', () => outbox.migrate({ cacheSchemas: [] }), 'Invalid cacheSchemas: [] must be a non-empty array of schema names'],
    ['a migrate logger without methods', () => outbox.migrate({ logger: 'console' as never }), 'Invalid logger: "console" must be an object with the methods debug, info, warn, error'],
  ])('rejects %s before any SQL', async (_label, attempt, message) => {
    const error = await expectRejected(attempt);

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toContain(message);
  });
});

describe('drainer Lambda input validation', () => {
  let handlers: DrainerHandlers;
  const lines: LogLine[] = [];

  beforeAll(async () => {
    handlers = createDrainerHandlers({
      indexes: INDEXES,
      database: { db: logged, setSecret: () => {}, close: async () => {} },
      environment: {},
      logger: new ForwardingLogger(capturingLogger(lines), { logLevel: 'WARN' }),
      metrics: new ForwardingMetrics({ onPublish: () => {} }),
    });
    // One pending row, so that a drain started by mistake would change the outbox.
    await outbox.mark(logged, 'dcim.site', 101);
  });

  beforeEach(() => {
    lines.length = 0;
  });

  function context() {
    return createLambdaContext({ functionName: 'search-outbox-drainer', timeoutMs: 60_000 });
  }

  function record(body: unknown, messageId: unknown): SQSRecord {
    return {
      messageId,
      receiptHandle: 'receipt',
      body,
      attributes: {},
      messageAttributes: {},
      md5OfBody: '',
      eventSource: 'aws:sqs',
      eventSourceARN: 'arn:aws:sqs:us-east-1:000000000000:drainer',
      awsRegion: 'us-east-1',
    } as unknown as SQSRecord;
  }

  const NUDGE = {
    kind: NUDGE_KIND,
    version: 1,
    schemas: ['public'],
    objects: 1,
    transactionIds: ['1'],
    sentAt: '2024-01-01T00:00:00Z',
  };
  const nudgeWith = (fields: Record<string, unknown>): string => JSON.stringify({ ...NUDGE, ...fields });

  test.each([
    ['an array', ['status'], 'Invalid payload: ["status"] must be an object such as {"action": "status"}'],
    ['a JSON string', '{"action":"status"}', 'Invalid payload: "{\\"action\\":\\"status\\"}" must be an object'],
    ['a number', 5, 'Invalid payload: 5 must be an object'],
    ['no action', {}, 'Invalid payload.action: undefined must be one of drain, rebuild, status, retry'],
    ['a numeric action', { action: 1 }, 'Invalid payload.action: 1 must be one of'],
    ['an action in capitals', { action: 'STATUS' }, 'Invalid payload.action: "STATUS" must be one of'],
    ['an Object method as action', { action: 'toString' }, 'Invalid payload.action: "toString" must be one of'],
    [
      'a __proto__ key',
      JSON.parse('{"action":"status","__proto__":{"polluted":true}}'),
      'Invalid payload.__proto__: {"polluted":true} is not a field of action "status"',
    ],
    ['a zero batch size', { action: 'drain', batchSize: 0 }, 'Invalid payload.batchSize: 0 must be a positive integer'],
    ['a fractional batch size', { action: 'drain', batchSize: 1.5 }, 'Invalid payload.batchSize: 1.5 must be a positive integer'],
    ['an unsafe batch size', { action: 'drain', batchSize: 1e20 }, 'Invalid payload.batchSize: 100000000000000000000 must be a positive integer'],
    ['a batch size above the maximum', { action: 'drain', batchSize: 100_000 }, 'Invalid batchSize: 100000 must be an integer from 1 to 10000'],
    ['a null max batches', { action: 'drain', maxBatches: null }, 'Invalid payload.maxBatches: null must be a positive integer'],
    ['an injected rebuild schema', { action: 'rebuild', schema: 'public; DROP TABLE site' }, 'Invalid schema: "public; DROP TABLE site" is not a valid identifier'],
    ['a 1 MB rebuild schema', { action: 'rebuild', schema: MEGABYTE_STRING }, `Invalid payload.schema: ${MEGABYTE_SHOWN} must be a non-empty string of at most 255 characters`],
    ['a chunk size above the maximum', { action: 'rebuild', chunkSize: 100_000 }, 'Invalid chunkSize: 100000 must be an integer from 1 to 50000'],
    ['a string of types', { action: 'rebuild', objectTypes: 'dcim.site' }, 'Invalid payload.objectTypes: "dcim.site" must be a non-empty array of at most 10000 strings'],
    ['a null type', { action: 'rebuild', objectTypes: [null] }, 'Invalid payload.objectTypes[0]: null must be a non-empty string'],
    ['an object type', { action: 'rebuild', objectTypes: [{}] }, 'Invalid payload.objectTypes[0]: {} must be a non-empty string'],
    ['an injected retry type', { action: 'retry', objectType: "dcim.site'; --" }, `Invalid objectType: "dcim.site'; --" is not a declared object type`],
    ['retry ids without a type', { action: 'retry', objectIds: ['1'] }, 'Invalid objectIds: ["1"] need an objectType'],
    ['a NUL byte in a retry id', { action: 'retry', objectType: 'extras.tag', objectIds: ['a\u0000'] }, 'Invalid id: "a\\u0000" must not contain NUL characters'],
    ['a retry id of the wrong key type', { action: 'retry', objectType: 'dcim.site', objectIds: ['1; --'] }, 'Invalid id: "1; --" must be an integer from'],
  ])('invoke rejects %s before any SQL', async (_label, payload, message) => {
    const error = await expectRejected(() => handlers.invoke(payload, context()));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toContain(message);
    expect(error.message.length).toBeLessThan(SHORT_MESSAGE);
  });

  test.each([
    ['an undefined body', undefined, 'Invalid body: undefined must be a string of JSON'],
    ['a numeric body', 5, 'Invalid body: 5 must be a string of JSON'],
    ['a 1 MB body', MEGABYTE_STRING, `Invalid body: ${MEGABYTE_SHOWN} must be at most 65536 characters long`],
    ['a JSON null', 'null', 'Invalid body: "null" must be a JSON object'],
    ['a JSON string', '"nudge"', 'must be a JSON object'],
    ['a JSON array', '[1]', 'must be a JSON object'],
    ['a raw NUL byte', '{"kind":"\u0000"}', 'Invalid body: "{\\"kind\\":\\"\\u0000\\"}" is not valid JSON'],
    ['an escaped NUL byte', '{"kind":"\\u0000"}', 'Invalid body.kind: "\\u0000" must be "search-outbox.nudge"'],
    ['a missing kind', nudgeWith({ kind: undefined }), 'Invalid body.kind: undefined must be "search-outbox.nudge"'],
    ['a string version', nudgeWith({ version: '1' }), 'Invalid body.version: "1" must be 1'],
    ['a string of schemas', nudgeWith({ schemas: 'public' }), 'Invalid body.schemas: "public" must be an array of at most 1000 strings'],
    ['an injected schema', nudgeWith({ schemas: ['public; DROP TABLE site'] }), 'Invalid body.schemas[0]: "public; DROP TABLE site" must be a schema name'],
    ['an injected transaction id', nudgeWith({ transactionIds: ['1 OR 1=1'] }), 'Invalid body.transactionIds[0]: "1 OR 1=1" must be a transaction id'],
    ['a 21-digit transaction id', nudgeWith({ transactionIds: ['9'.repeat(21)] }), 'must be a transaction id'],
    ['a negative object count', nudgeWith({ objects: -1 }), 'Invalid body.objects: -1 must be a non-negative integer'],
    ['a string object count', nudgeWith({ objects: '3' }), 'Invalid body.objects: "3" must be a non-negative integer'],
    ['an invalid timestamp', nudgeWith({ sentAt: 'yesterday' }), 'Invalid body.sentAt: "yesterday" must be an ISO 8601 timestamp'],
  ])('SQS reports a record with %s before any SQL', async (_label, body, message) => {
    const before = await snapshot();
    statements.length = 0;
    const response = await handlers.sqs({ Records: [record(body, 'm-1')] }, context());

    expect(response.batchItemFailures).toEqual([{ itemIdentifier: 'm-1' }]);
    expect(statements).toEqual([]);
    expect(await snapshot()).toEqual(before);
    const warning = lines.find((line) => line.message === 'rejected a malformed SQS record');
    expect(warning?.attributes?.messageId).toBe('m-1');
    expect(String(warning?.attributes?.error)).toContain(message);
    expect(String(warning?.attributes?.error).length).toBeLessThan(SHORT_MESSAGE);
  });

  test('SQS drops a malformed record without a message id', async () => {
    const before = await snapshot();
    statements.length = 0;
    const response = await handlers.sqs({ Records: [null, record('{}', undefined), record('{}', 42)] } as unknown as SQSEvent, context());

    // Without a message id the handler cannot name a record in batchItemFailures, so none is reported.
    expect(response.batchItemFailures).toEqual([]);
    expect(statements).toEqual([]);
    expect(await snapshot()).toEqual(before);
    expect(lines.filter((line) => line.message === 'rejected a malformed SQS record')).toHaveLength(3);
  });

  test('SQS accepts an empty batch without SQL', async () => {
    statements.length = 0;
    const response = await handlers.sqs({ Records: [] }, context());

    expect(response.batchItemFailures).toEqual([]);
    expect(statements).toEqual([]);
  });

  test.each([
    ['no event', null, 'undefined'],
    ['a string of records', { Records: 'records' }, '"records"'],
    ['an object of records', { Records: { 0: {} } }, '{"0":{}}'],
  ])('SQS rejects %s before any SQL', async (_label, event, shown) => {
    const error = await expectRejected(() => handlers.sqs(event as unknown as SQSEvent, context()));

    expect(error).toBeInstanceOf(ValidationError);
    expect(error.message).toBe(`Invalid event.Records: ${shown} must be an array of SQS records`);
  });

  test.each([
    ['SEARCH_OUTBOX_SCHEMA', 'search_outbox; DROP SCHEMA public CASCADE'],
    ['SEARCH_OUTBOX_SCHEMA', '"search_outbox"'],
    ['SEARCH_OUTBOX_CACHE_SCHEMA', 'public.search_cache'],
    ['SEARCH_OUTBOX_CACHE_SCHEMA', 'c'.repeat(64)],
    ['SEARCH_OUTBOX_CACHE_SCHEMA', 'naïve'],
    ['SEARCH_OUTBOX_CACHE_SCHEMA', 'pub lic'],
  ])('configuration rejects %s=%s', (variable, value) => {
    expect(() => readDrainerConfig({ DATABASE_URL: 'postgres://u@127.0.0.1/db', [variable]: value })).toThrow(
      `Invalid ${variable}: ${JSON.stringify(value)} is not a valid schema name (letters, digits, underscores)`,
    );
  });

  test.each([
    ['DB_PORT', '5432abc', '"5432abc"', 'from 1 to 65535'],
    ['DB_PORT', '1e3', '"1e3"', 'from 1 to 65535'],
    ['DB_PORT', '-1', '"-1"', 'from 1 to 65535'],
    ['DB_PORT', '0x10', '"0x10"', 'from 1 to 65535'],
    ['DB_PORT', '65536', '"65536"', 'from 1 to 65535'],
    ['DB_PORT', '9'.repeat(400), `"${'9'.repeat(80)}... (400 characters)"`, 'from 1 to 65535'],
    ['DB_POOL_MAX', '21', '"21"', 'from 1 to 20'],
    ['DB_STATEMENT_TIMEOUT_MS', '-5', '"-5"', 'from 0 to 900000'],
  ])('configuration rejects %s=%s', (variable, value, shown, range) => {
    const environment = { DB_HOST: '127.0.0.1', DB_USER: 'drainer', DB_IAM_AUTH: 'true', [variable]: value };

    expect(() => readDrainerConfig(environment)).toThrow(`Invalid ${variable}: ${shown} must be an integer ${range}`);
  });

  test('configuration rejects a non-boolean IAM flag', () => {
    expect(() => readDrainerConfig({ DB_HOST: '127.0.0.1', DB_USER: 'drainer', DB_IAM_AUTH: 'yes' })).toThrow(
      'Invalid DB_IAM_AUTH: "yes" must be true or false',
    );
  });
});
