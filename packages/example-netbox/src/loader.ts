import { sql, type Kysely, type Transaction } from 'kysely';
import { silentLogger, type Logger, type SearchOutbox } from '@search-outbox/core';
import { readCsv, type CsvRecord } from './csv.js';
import type { DemoModel, TableDefinition } from './model.js';

export interface LoadOptions {
  /** Schema of the application tables; marks record it. Default: `public`. */
  readonly schema?: string;
  readonly logger?: Logger;
}

export interface LoadedTable {
  readonly table: string;
  readonly objectType: string | undefined;
  readonly rows: number;
}

/** An object that one of the load's special transactions worked on. */
export interface ScenarioObject {
  readonly objectType: string;
  readonly id: string;
  readonly name: string;
}

export interface LoadSummary {
  readonly tables: readonly LoadedTable[];
  /** Committed transactions that marked objects. */
  readonly transactions: number;
  /** Calls of `mark` and `markDeleted` in committed transactions, outside rolled-back savepoints. */
  readonly markCalls: number;
  /** Ids passed to those calls. */
  readonly markedIds: number;
  /** Pending rows in the outbox after the load. */
  readonly outboxRows: number;
  /** Inserted and marked inside a savepoint that was rolled back: it must leave no trace. */
  readonly rolledBack: ScenarioObject;
  /** Deleted and inserted again in one transaction (markDeleted, then mark). */
  readonly recreated: ScenarioObject;
  /** Edited in several transactions in a row, the last one restoring the CSV value. */
  readonly edited: ScenarioObject & { readonly transactions: number };
}

/** Rows per INSERT statement, well under PostgreSQL's 65535 bind parameters for the widest CSV. */
const INSERT_CHUNK_ROWS = 500;
/** Application tables written one object per transaction, as a form-by-form user would. */
const ONE_OBJECT_PER_TRANSACTION = new Set(['dcim_site']);
/** Id of the tenant that the rolled-back savepoint inserts; far above the demo data's ids. */
const ROLLED_BACK_TENANT_ID = '900001';
const ROLLED_BACK_TENANT_NAME = 'Savepoint Rollback Tenant';
/** Descriptions the edited site goes through before its CSV description is restored. */
const SITE_EDITS = ['Renovation planned', 'Renovation in progress', 'Renovation finished'];

/**
 * Loads every table of the NetBox demo data through application-style
 * transactions that mark the written objects in the outbox:
 *
 * - lookup tables without a search index are inserted plainly;
 * - most tables are inserted in one transaction each, with one bulk mark;
 * - sites are inserted one per transaction;
 * - the tenants' transaction also inserts a tenant inside a savepoint and
 *   rolls the savepoint back, so neither the tenant nor its mark survives;
 * - one device is deleted and inserted again in one transaction;
 * - one site is edited in several transactions in a row, which the drain
 *   coalesces into one rebuild.
 *
 * The tables must exist and be empty. The outbox should not drain inline
 * (dispatcher `none`) when the caller wants to show the coalescing.
 */
export async function loadDemoData(
  db: Kysely<any>,
  outbox: SearchOutbox,
  model: DemoModel,
  options: LoadOptions = {},
): Promise<LoadSummary> {
  const loader = new DemoLoader(db, outbox, model, options.schema ?? 'public', options.logger ?? silentLogger);
  return loader.load();
}

class DemoLoader {
  readonly #db: Kysely<any>;
  readonly #outbox: SearchOutbox;
  readonly #model: DemoModel;
  readonly #schema: string;
  readonly #logger: Logger;
  #transactions = 0;
  #markCalls = 0;
  #markedIds = 0;

  constructor(db: Kysely<any>, outbox: SearchOutbox, model: DemoModel, schema: string, logger: Logger) {
    this.#db = db;
    this.#outbox = outbox;
    this.#model = model;
    this.#schema = schema;
    this.#logger = logger;
  }

  async load(): Promise<LoadSummary> {
    const tables: LoadedTable[] = [];
    const records = new Map<string, CsvRecord[]>();
    let rolledBack: ScenarioObject | undefined;

    for (const definition of this.#model.tables) {
      const rows = definition.file === undefined ? [] : readCsv(this.#model.dataDirectory, definition.file);
      records.set(definition.table, rows);
      const started = Date.now();

      if (definition.objectType === undefined) {
        await this.#db.transaction().execute((trx) => this.#insert(trx, definition, rows));
      } else if (rows.length === 0) {
        // Nothing to insert, so no transaction: the table stays empty.
      } else if (ONE_OBJECT_PER_TRANSACTION.has(definition.table)) {
        await this.#insertOnePerTransaction(definition, definition.objectType, rows);
      } else if (definition.table === 'tenancy_tenant') {
        rolledBack = await this.#insertWithRolledBackSavepoint(definition, definition.objectType, rows);
      } else {
        await this.#insertInBulk(definition, definition.objectType, rows);
      }

      tables.push({ table: definition.table, objectType: definition.objectType, rows: rows.length });
      this.#logger.debug('loaded table', { table: definition.table, rows: rows.length, durationMs: Date.now() - started });
    }

    if (rolledBack === undefined) throw new Error('The demo data has no tenants, so the savepoint scenario did not run');
    const recreated = await this.#deleteAndRecreate(this.#tableFor('dcim.device'), firstRecord(records, 'dcim_device'));
    const edited = await this.#editRepeatedly(this.#tableFor('dcim.site'), records.get('dcim_site')?.[1]);
    const status = await this.#outbox.status();

    return {
      tables,
      transactions: this.#transactions,
      markCalls: this.#markCalls,
      markedIds: this.#markedIds,
      outboxRows: status.pending,
      rolledBack,
      recreated,
      edited,
    };
  }

  async #insertInBulk(definition: TableDefinition, objectType: string, rows: readonly CsvRecord[]): Promise<void> {
    await this.#transaction(async (trx) => {
      await this.#insert(trx, definition, rows);
      await this.#mark(trx, objectType, rows.map(requireId));
    });
  }

  async #insertOnePerTransaction(
    definition: TableDefinition,
    objectType: string,
    rows: readonly CsvRecord[],
  ): Promise<void> {
    for (const row of rows) {
      await this.#transaction(async (trx) => {
        await this.#insert(trx, definition, [row]);
        await this.#mark(trx, objectType, [requireId(row)]);
      });
    }
  }

  /**
   * Inserts and marks all rows, then inserts and marks one more tenant inside
   * a savepoint and rolls the savepoint back before the commit. Kysely 0.28
   * offers savepoints only on `startTransaction()` transactions, not inside a
   * `transaction().execute()` callback, so the savepoint is raw SQL.
   */
  async #insertWithRolledBackSavepoint(
    definition: TableDefinition,
    objectType: string,
    rows: readonly CsvRecord[],
  ): Promise<ScenarioObject> {
    await this.#transaction(async (trx) => {
      await this.#insert(trx, definition, rows);
      await this.#mark(trx, objectType, rows.map(requireId));

      await sql`SAVEPOINT import_extra_tenant`.execute(trx);
      await this.#insert(trx, definition, [{ id: ROLLED_BACK_TENANT_ID, name: ROLLED_BACK_TENANT_NAME, slug: 'savepoint-rollback' }]);
      await this.#outbox.mark(trx, objectType, [ROLLED_BACK_TENANT_ID], { schema: this.#schema });
      await sql`ROLLBACK TO SAVEPOINT import_extra_tenant`.execute(trx);
    });
    return { objectType, id: ROLLED_BACK_TENANT_ID, name: ROLLED_BACK_TENANT_NAME };
  }

  async #deleteAndRecreate(definition: TableDefinition, row: CsvRecord): Promise<ScenarioObject> {
    const objectType = requireObjectType(definition);
    const id = requireId(row);
    await this.#transaction(async (trx) => {
      await trx.withSchema(this.#schema).deleteFrom(definition.table).where('id', '=', id).execute();
      await this.#outbox.markDeleted(trx, objectType, id, { schema: this.#schema });
      this.#countMark(1);

      await this.#insert(trx, definition, [row]);
      await this.#mark(trx, objectType, [id]);
    });
    return { objectType, id, name: row.name ?? id };
  }

  async #editRepeatedly(
    definition: TableDefinition,
    row: CsvRecord | undefined,
  ): Promise<ScenarioObject & { transactions: number }> {
    if (row === undefined) throw new Error(`Table ${definition.table} has fewer than two rows to edit`);
    const objectType = requireObjectType(definition);
    const id = requireId(row);
    const descriptions = [...SITE_EDITS, row.description ?? null];
    for (const description of descriptions) {
      await this.#transaction(async (trx) => {
        await trx.withSchema(this.#schema).updateTable(definition.table).set({ description }).where('id', '=', id).execute();
        await this.#mark(trx, objectType, [id]);
      });
    }
    return { objectType, id, name: row.name ?? id, transactions: descriptions.length };
  }

  async #transaction(work: (trx: Transaction<any>) => Promise<void>): Promise<void> {
    await this.#outbox.transaction(work);
    this.#transactions += 1;
  }

  async #mark(trx: Transaction<any>, objectType: string, ids: readonly string[]): Promise<void> {
    await this.#outbox.mark(trx, objectType, ids, { schema: this.#schema });
    this.#countMark(ids.length);
  }

  #countMark(ids: number): void {
    this.#markCalls += 1;
    this.#markedIds += ids;
  }

  async #insert(trx: Transaction<any>, definition: TableDefinition, rows: readonly CsvRecord[]): Promise<void> {
    for (let start = 0; start < rows.length; start += INSERT_CHUNK_ROWS) {
      const chunk = rows.slice(start, start + INSERT_CHUNK_ROWS);
      await trx.withSchema(this.#schema).insertInto(definition.table).values(chunk).execute();
    }
  }

  #tableFor(objectType: string): TableDefinition {
    const found = this.#model.tables.find((definition) => definition.objectType === objectType);
    if (found === undefined) throw new Error(`The demo model has no table for object type "${objectType}"`);
    return found;
  }
}

function firstRecord(records: ReadonlyMap<string, CsvRecord[]>, table: string): CsvRecord {
  const row = records.get(table)?.[0];
  if (row === undefined) throw new Error(`Table ${table} has no rows in the demo data`);
  return row;
}

function requireId(row: CsvRecord): string {
  const id = row.id;
  if (id === null || id === undefined) throw new Error(`A demo data row has no id: ${JSON.stringify(row)}`);
  return id;
}

function requireObjectType(definition: TableDefinition): string {
  if (definition.objectType === undefined) throw new Error(`Table ${definition.table} has no search index`);
  return definition.objectType;
}
