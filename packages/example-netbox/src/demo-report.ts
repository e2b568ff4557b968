import type { SearchResult } from '@search-outbox/core';
import type { DemoResult, SearchExample } from './demo.js';

/** Formats the demo's outcome as the plain-text report that `search-outbox demo` prints. */
export function formatDemoReport(result: DemoResult): string {
  const lines: string[] = [];
  const { load, drain } = result;
  const server = result.embedded ? 'embedded PostgreSQL (removed when the demo ends)' : 'DATABASE_URL (kept)';

  lines.push('search-outbox demo on the NetBox demo data');
  lines.push(`Database: ${result.database} on ${server}; tables and cache in schema "${result.schema}"`);
  lines.push(`Migrations applied: ${result.migrations.applied.length}`);
  lines.push('');

  const rows = load.tables.reduce((total, table) => total + table.rows, 0);
  lines.push(`Loaded ${rows} rows into ${load.tables.length} tables through application transactions:`);
  lines.push(
    `  ${load.transactions} committed transactions made ${load.markCalls} mark calls for ${load.markedIds} ids, ` +
      `leaving ${load.outboxRows} pending outbox rows`,
  );
  lines.push(
    `  savepoint: tenant "${load.rolledBack.name}" (id ${load.rolledBack.id}) was inserted and marked inside a ` +
      `savepoint that was rolled back; outbox rows for it: ${result.rolledBackOutboxRows}`,
  );
  lines.push(
    `  delete and re-create: ${load.recreated.objectType} "${load.recreated.name}" (id ${load.recreated.id}) ` +
      'was deleted (markDeleted) and inserted again (mark) in one transaction',
  );
  lines.push(
    `  repeated edits: ${load.edited.objectType} "${load.edited.name}" (id ${load.edited.id}) was edited in ` +
      `${load.edited.transactions} transactions in a row, each marking it again`,
  );
  lines.push('');

  lines.push(
    `Drain: ${drain.claimed} outbox rows claimed in ${drain.batches} batches for ${drain.objects} distinct objects ` +
      `(${drain.claimed - drain.objects} marks coalesced across transactions)`,
  );
  lines.push(
    `  rebuilt ${drain.rebuilt}, removed ${drain.removed}, failed ${drain.failed}, dead ${drain.dead}, ` +
      `skipped ${drain.skipped}, remaining ${drain.remaining}, in ${drain.durationMs} ms (stopped: ${drain.stoppedBy})`,
  );
  lines.push('  (removed: objects left with no cache rows, because they are gone or have no non-empty indexed field)');
  lines.push('');

  lines.push('Cache after the drain, per object type:');
  lines.push(`  ${'object type'.padEnd(32)}${'objects'.padStart(8)}${'cached'.padStart(8)}${'rows'.padStart(8)}`);
  for (const type of result.types) {
    lines.push(
      `  ${type.objectType.padEnd(32)}${String(type.objects).padStart(8)}` +
        `${String(type.cachedObjects).padStart(8)}${String(type.cacheRows).padStart(8)}`,
    );
  }
  const totalRows = result.types.reduce((total, type) => total + type.cacheRows, 0);
  lines.push(`  ${'total'.padEnd(48)}${String(totalRows).padStart(8)}`);
  lines.push('  (objects: rows in the table; cached: objects with at least one non-empty indexed field)');
  lines.push('');

  lines.push('Example searches:');
  for (const search of result.searches) lines.push(...formatSearch(search));
  lines.push('');
  lines.push(`Finished in ${(result.durationMs / 1000).toFixed(1)} s`);
  return `${lines.join('\n')}\n`;
}

function formatSearch(search: SearchExample): string[] {
  const { options } = search;
  const types = options.objectTypes === undefined ? '' : `, types ${options.objectTypes.join(', ')}`;
  const lines = [
    `  ${search.title}`,
    `    search ${JSON.stringify(options.query)} (${options.lookup ?? 'partial'}${types}): ${countResults(search.results)}`,
  ];
  for (const result of search.results) lines.push(`      ${formatResult(result)}`);
  return lines;
}

function countResults(results: readonly SearchResult[]): string {
  return results.length === 1 ? '1 result' : `${results.length} results`;
}

/** Formats one result line: the object, its best match, then its non-empty display attributes. */
export function formatResult(result: SearchResult): string {
  const display = Object.entries(result.display)
    .filter((entry): entry is [string, string] => entry[1] !== null && entry[1] !== '')
    .map(([name, value]) => `${name}=${value}`)
    .join(', ');
  const match = `${result.objectType} #${result.objectId}  ${result.field}: ${JSON.stringify(result.value)} (weight ${result.weight})`;
  return display === '' ? match : `${match}  [${display}]`;
}
