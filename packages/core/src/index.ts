export { createSearchOutbox, inlineDispatcher, SearchOutbox } from './search-outbox.js';
export { verifyIndexes } from './verify.js';
export type { CommittedTransaction, Dispatcher, DispatchStats, SearchOutboxOptions } from './search-outbox.js';
export { defineIndexes, IndexRegistry, KEY_TYPES, VALUE_TYPES } from './indexes.js';
export type {
  ColumnSource,
  DisplayAttribute,
  IndexedField,
  IndexFilter,
  JsonSource,
  KeyType,
  RelatedSource,
  ResolvedIndex,
  SearchIndex,
  ValueSource,
  ValueType,
} from './indexes.js';
export { assertMigrated, CACHE_TABLE, DEFAULT_OUTBOX_SCHEMA, LATEST_VERSIONS, migrate, OUTBOX_TABLE } from './migrations.js';
export type { AppliedMigration, MigrateOptions, MigrateResult } from './migrations.js';
export { MAX_IDS_PER_MARK, MAX_OBJECT_ID_LENGTH } from './marks.js';
export type { MarkOperation, MarkOptions, MarkResult, ObjectId } from './marks.js';
export { DEFAULT_BATCH_SIZE } from './drain.js';
export type { DrainOptions, DrainProgress, DrainSummary, RetrySettings } from './drain.js';
export type { RebuildOptions, RebuildProgress, RebuildSummary, RebuiltType } from './rebuild.js';
export { escapeLike, LOOKUPS, MAX_MATCHED_ROWS, MAX_QUERY_LENGTH } from './search.js';
export type { Lookup, SearchOptions, SearchResult } from './search.js';
export type { OutboxStatus, RetryOptions, RetryResult, TypeStatus } from './status.js';
export {
  describeValue,
  errorMessage,
  IndexDeclarationError,
  MigrationError,
  SearchOutboxError,
  UnknownObjectTypeError,
  ValidationError,
} from './errors.js';
export { silentLogger } from './logger.js';
export type { LogAttributes, Logger } from './logger.js';
