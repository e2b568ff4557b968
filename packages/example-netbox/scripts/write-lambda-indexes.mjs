#!/usr/bin/env node
// Writes src/lambda/demo-indexes.json: the search index declarations that
// loadDemoIndexes() builds from the NetBox demo data. The Lambda entry imports
// this file, so that the bundle contains the declarations and reads no demo data
// at run time. Run it after a change to the demo data or to src/model.ts, then
// commit the file; test/lambda/example-entry.test.ts fails while it is stale.
//
//   npx turbo run build && npm run write-lambda-indexes -w @search-outbox/example-netbox
//
// The demo data is read from SEARCH_OUTBOX_DEMO_DATA, else from
// ../shared/data/netbox-demo beside the repository.
import { existsSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const packageDirectory = fileURLToPath(new URL('../', import.meta.url));
const compiledModel = new URL('../dist/index.js', import.meta.url);
const outputFile = fileURLToPath(new URL('../src/lambda/demo-indexes.json', import.meta.url));

if (!existsSync(fileURLToPath(compiledModel))) {
  console.error(`error: ${fileURLToPath(compiledModel)} is missing; run \`npx turbo run build\` first`);
  process.exit(1);
}

const { loadDemoIndexes } = await import(compiledModel.href);
const indexes = loadDemoIndexes();
writeFileSync(outputFile, `${JSON.stringify(indexes, null, 2)}\n`);
console.log(`wrote ${indexes.length} search index declarations to ${outputFile.slice(packageDirectory.length)}`);
