// Configuration of the search-outbox CLI for the example application:
//   npm run cli -- search --config packages/example-netbox/search-outbox.config.mjs "akron"
// Build the package first (npx turbo run build), because this imports its dist/.
import { DEMO_SCHEMA, loadDemoIndexes } from './dist/index.js';

/** Search index declarations of the NetBox demo data. */
export const indexes = loadDemoIndexes();

/** Schema of the outbox table. */
export const outboxSchema = 'search_outbox';

/** Cache schema that search, rebuild and migrate use unless --schema is given. */
export const schema = DEMO_SCHEMA;
