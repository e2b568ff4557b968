import type { Kysely } from 'kysely';
import { createSearchOutbox, type SearchOutbox, type SearchOutboxOptions } from '@search-outbox/core';
import { buildDemoModel, type DemoModel } from './model.js';

export interface ExampleOutboxOptions extends Omit<SearchOutboxOptions, 'db' | 'indexes'> {
  /** The model to index. Default: built from the demo data directory. */
  readonly model?: DemoModel;
  /** Directory of the demo data, when `model` is not given. */
  readonly dataDirectory?: string;
}

/**
 * Creates the outbox of the example application, with the search indexes
 * declared by the NetBox demo data. Build it once per process (outside a
 * Lambda handler, for example): it reads the declarations from disk.
 */
export function createExampleOutbox(db: Kysely<any>, options: ExampleOutboxOptions = {}): SearchOutbox {
  const { model, dataDirectory, ...outboxOptions } = options;
  const indexes = (model ?? buildDemoModel(dataDirectory)).indexes;
  return createSearchOutbox({ ...outboxOptions, db, indexes });
}
