import type { Kysely } from 'kysely';
import { readCsv } from './csv.js';
import { resolveDataDirectory } from './data-directory.js';

export interface LegacySnapshotOptions {
  /** Schema whose `search_cache` receives the rows. Default: `public`. */
  readonly schema?: string;
  /** Directory of the demo data. Default: see `resolveDataDirectory`. */
  readonly dataDirectory?: string;
}

const SNAPSHOT_FILE = 'legacy_cachedvalue_snapshot.csv';
const INSERT_CHUNK_ROWS = 1000;

/**
 * Copies the stale search cache of the NetBox dump into `<schema>.search_cache`,
 * the state a cache is in before a rebuild replaces it. The object type comes
 * from `object_type_label`; the dump's row ids and timestamps are dropped.
 * Returns the number of rows inserted.
 */
export async function loadLegacySnapshot(db: Kysely<any>, options: LegacySnapshotOptions = {}): Promise<number> {
  const directory = resolveDataDirectory(options.dataDirectory);
  const rows = readCsv(directory, SNAPSHOT_FILE).map((record, position) => ({
    object_type: requireCell(record.object_type_label, position, 'object_type_label'),
    object_id: requireCell(record.object_id, position, 'object_id'),
    field: requireCell(record.field, position, 'field'),
    type: requireCell(record.type, position, 'type'),
    // The cache stores no NULL values; the dump's empty strings read as NULL.
    value: record.value ?? '',
    weight: Number(requireCell(record.weight, position, 'weight')),
  }));

  await db.transaction().execute(async (trx) => {
    for (let start = 0; start < rows.length; start += INSERT_CHUNK_ROWS) {
      const chunk = rows.slice(start, start + INSERT_CHUNK_ROWS);
      await trx.withSchema(options.schema ?? 'public').insertInto('search_cache').values(chunk).execute();
    }
  });
  return rows.length;
}

function requireCell(value: string | null | undefined, position: number, column: string): string {
  if (value === null || value === undefined) {
    throw new Error(`${SNAPSHOT_FILE}: row ${position + 2} has no value in column "${column}"`);
  }
  return value;
}
