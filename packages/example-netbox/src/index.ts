export { APPLICATION_TABLES, type ApplicationTable, type Reference } from './catalogue.js';
export { readCsv, readCsvHeader, type CsvRecord } from './csv.js';
export { DEMO_DATA_ENV, resolveDataDirectory } from './data-directory.js';
export {
  DEMO_DATABASE,
  DEMO_SCHEMA,
  runDemo,
  type DemoOptions,
  type DemoResult,
  type ProgressReporter,
  type SearchExample,
  type TypeReport,
} from './demo.js';
export { formatDemoReport, formatResult } from './demo-report.js';
export { createExampleOutbox, type ExampleOutboxOptions } from './example-outbox.js';
export { loadLegacySnapshot, type LegacySnapshotOptions } from './legacy-snapshot.js';
export { loadDemoData, type LoadedTable, type LoadOptions, type LoadSummary, type ScenarioObject } from './loader.js';
export {
  buildDemoModel,
  loadDemoIndexes,
  type DemoModel,
  type SkippedDeclaration,
  type TableColumn,
  type TableDefinition,
} from './model.js';
export { createApplicationTables, dropApplicationTables } from './schema.js';
