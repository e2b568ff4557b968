import { createSearchOutbox } from '@search-outbox/core';
import { loadDemoIndexes } from '@search-outbox/example-netbox';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';

/**
 * Drains, as the child process of the memory scenario, every pending outbox
 * row of the database at argv[2] with the demo declarations from the data
 * directory at argv[3]. It then prints one JSON line with the drain summary
 * and the process's peak resident set size.
 */
async function main(): Promise<void> {
  const [url, dataDirectory] = process.argv.slice(2);
  if (url === undefined || dataDirectory === undefined) {
    throw new Error('Usage: memory-drain-child.js <database url> <demo data directory>');
  }
  const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 1 }) }) });
  try {
    const outbox = createSearchOutbox({ db, indexes: loadDemoIndexes(dataDirectory), dispatcher: 'none' });
    const summary = await outbox.drain();
    // maxRSS is in kilobytes.
    process.stdout.write(`${JSON.stringify({ maxRssKb: process.resourceUsage().maxRSS, objects: summary.objects })}\n`);
  } finally {
    await db.destroy();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`memory-drain-child failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`);
  process.exitCode = 1;
});
