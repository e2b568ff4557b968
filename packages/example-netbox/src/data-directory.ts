import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Environment variable that overrides where the NetBox demo data is read from. */
export const DEMO_DATA_ENV = 'SEARCH_OUTBOX_DEMO_DATA';

/**
 * The data directory beside the repository: this file is compiled to
 * `<repo>/packages/example-netbox/dist/`, and the data lives in
 * `<repo>/../shared/data/netbox-demo`.
 */
const DEFAULT_DATA_DIRECTORY = fileURLToPath(new URL('../../../../shared/data/netbox-demo/', import.meta.url));

/**
 * Returns the directory of the NetBox demo CSV files. Precedence: the
 * explicit option, then `SEARCH_OUTBOX_DEMO_DATA`, then the directory beside
 * the repository. Throws when the directory has no `search-indexes.json`.
 */
export function resolveDataDirectory(explicit?: string): string {
  const fromEnvironment = process.env[DEMO_DATA_ENV];
  const directory =
    explicit ?? (fromEnvironment !== undefined && fromEnvironment !== '' ? fromEnvironment : DEFAULT_DATA_DIRECTORY);
  if (!existsSync(`${directory}/search-indexes.json`)) {
    throw new Error(
      `NetBox demo data not found: ${directory} has no search-indexes.json. ` +
        `Set ${DEMO_DATA_ENV} to the directory that holds the demo CSV files.`,
    );
  }
  return directory;
}
