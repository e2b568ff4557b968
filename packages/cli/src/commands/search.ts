import { Command } from 'commander';
import type { SearchResult } from '@search-outbox/core';
import { EXIT_SUCCESS } from '../errors.js';
import { collect, parseLookup, parseObjectTypes, parseOptionalInteger, parseSchema } from '../options.js';
import type { CommandBuilder } from '../program.js';

interface SearchCommandOptions {
  readonly lookup: string;
  readonly type?: string[];
  readonly limit?: string;
  readonly schema?: string;
}

export function registerSearch(program: Command, build: CommandBuilder): void {
  const command = program
    .command('search')
    .description('Search the cache: one result per object, best match first (lowest weight)')
    .argument('<query>', 'text to look for; an IP address also matches addresses with that host and prefixes containing it')
    .option('--lookup <lookup>', 'partial, exact, startswith, endswith or regex (all case-insensitive)', 'partial')
    .option('--type <objectType>', 'only objects of this type; repeat for several (default: every type)', collect)
    .option('--limit <count>', 'objects returned, 1 to 1000 (default: 50)')
    .option('--schema <schema>', 'schema of the cache (default: the configuration\'s schema, else public)');

  build(command, async (context, query: string, options: SearchCommandOptions) => {
    const lookup = parseLookup(options.lookup);
    const limit = parseOptionalInteger('--limit', options.limit, 1, 1000);

    return context.withOutbox(true, async (outbox, config) => {
      const schema = options.schema === undefined ? config.schema : parseSchema('--schema', options.schema);
      const objectTypes = parseObjectTypes(outbox.indexes, options.type);
      const results = await outbox.search({
        query,
        lookup,
        schema,
        ...(objectTypes === undefined ? {} : { objectTypes }),
        ...(limit === undefined ? {} : { limit }),
      });

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

/** Formats one line per result: the object, its best match, then its non-empty display attributes. */
function formatResult(result: SearchResult): string {
  const display = Object.entries(result.display)
    .filter((entry): entry is [string, string] => entry[1] !== null && entry[1] !== '')
    .map(([name, value]) => `${name}=${value}`)
    .join(', ');
  const match = `${result.objectType} #${result.objectId}  ${result.field}: ${JSON.stringify(result.value)} (weight ${result.weight})`;
  return display === '' ? match : `${match}  [${display}]`;
}
