import { Command } from 'commander';
import { describeValue, SearchOutboxError, ValidationError, type Lookup, type SearchResult } from '@search-outbox/core';
import { EXIT_SUCCESS } from '../errors.js';
import { collect, parseLookup, parseObjectTypes, parseOptionalInteger, parseSchema } from '../options.js';
import type { CommandBuilder } from '../program.js';

/** Statement timeout of a search without `--timeout`, the same as the core search's default. */
const DEFAULT_TIMEOUT_MS = 5000;
/** Largest `timeoutMs` that the core search accepts (the smallest is 1). */
const MAX_TIMEOUT_MS = 600_000;
/** SQLSTATE query_canceled, which PostgreSQL raises when a statement timeout ends a query. */
const QUERY_CANCELED = '57014';

interface SearchCommandOptions {
  readonly lookup: string;
  readonly type?: string[];
  readonly limit?: string;
  readonly schema?: string;
  readonly timeout?: string;
}

export function registerSearch(program: Command, build: CommandBuilder): void {
  const command = program
    .command('search')
    .description('Search the cache: one result per object, best match first (lowest weight)')
    .argument('<query>', 'text to look for; an IP address also matches addresses with that host and prefixes containing it')
    .option('--lookup <lookup>', 'partial, exact, startswith, endswith or regex (all case-insensitive)', 'partial')
    .option('--type <objectType>', 'only objects of this type; repeat for several (default: every type)', collect)
    .option('--limit <count>', 'objects returned, 1 to 1000 (default: 50)')
    .option('--schema <schema>', 'schema of the cache (default: the configuration\'s schema, else public)')
    .option(
      '--timeout <ms>',
      `statement timeout of the search in milliseconds, 1 to ${MAX_TIMEOUT_MS}, which bounds costly regular expressions (default: ${DEFAULT_TIMEOUT_MS})`,
    );

  build(command, async (context, query: string, options: SearchCommandOptions) => {
    const lookup = parseLookup(options.lookup);
    const limit = parseOptionalInteger('--limit', options.limit, 1, 1000);
    const timeoutMs = parseOptionalInteger('--timeout', options.timeout, 1, MAX_TIMEOUT_MS) ?? DEFAULT_TIMEOUT_MS;

    return context.withOutbox(true, async (outbox, config) => {
      const schema = options.schema === undefined ? config.schema : parseSchema('--schema', options.schema);
      const objectTypes = parseObjectTypes(outbox.indexes, options.type);
      let results: SearchResult[];
      try {
        results = await outbox.search({
          query,
          lookup,
          schema,
          timeoutMs,
          ...(objectTypes === undefined ? {} : { objectTypes }),
          ...(limit === undefined ? {} : { limit }),
        });
      } catch (error) {
        throw explainTimeout(error, query, lookup, timeoutMs);
      }

      if (context.json) {
        context.printJson(results);
      } else if (results.length === 0) {
        context.printLines([`No results for ${JSON.stringify(query)} (${lookup})`]);
      } else {
        context.printLines(results.map(formatResult));
      }
      return EXIT_SUCCESS;
    });
  });
}

/**
 * Replaces the core's statement timeout errors, whose advice names the
 * `timeoutMs` option of the search API, with errors that name `--timeout`
 * and `--type`. A costly regular expression stays a ValidationError (exit
 * code 2), because the input is what to change. Other errors pass unchanged.
 */
function explainTimeout(error: unknown, query: string, lookup: Lookup, timeoutMs: number): unknown {
  if (!(error instanceof SearchOutboxError) || !isStatementTimeout(error.cause)) return error;

  const timedOut = `timed out after ${timeoutMs} ms (--timeout)`;
  if (lookup === 'regex') {
    return new ValidationError(
      'query',
      query.trim(),
      `is too costly to match: the regex search ${timedOut}; use a simpler pattern, for example one without backreferences, or raise --timeout`,
      { cause: error },
    );
  }
  return new SearchOutboxError(
    `Search for ${describeValue(query.trim())} (lookup ${lookup}) ${timedOut}; raise --timeout or narrow the search with --type`,
    { cause: error.cause },
  );
}

/** Returns whether `error` is PostgreSQL's error for a statement that its statement timeout cancelled. */
function isStatementTimeout(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  return (error as { code?: unknown }).code === QUERY_CANCELED && error.message.includes('statement timeout');
}

/** Formats one line per result: the object, its best match, then its non-empty display attributes. */
function formatResult(result: SearchResult): string {
  const display = Object.entries(result.display)
    .filter((entry): entry is [string, string] => entry[1] !== null && entry[1] !== '')
    .map(([name, value]) => `${name}=${value}`)
    .join(', ');
  const match = `${result.objectType} #${result.objectId}  ${result.field}: ${JSON.stringify(result.value)} (weight ${result.weight})`;
  return display === '' ? match : `${match}  [${display}]`;
}
