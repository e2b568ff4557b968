import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { sql, type Kysely, type Transaction } from 'kysely';
import { Drainer, type DrainOptions, type DrainSummary, type RetrySettings } from './drain.js';
import { errorMessage, SearchOutboxError, ValidationError } from './errors.js';
import { assertIdentifier } from './identifiers.js';
import { defineIndexes, IndexRegistry, type SearchIndex } from './indexes.js';
import { validateLogger, type Logger } from './logger.js';
import { insertMarks, type MarkOptions, type MarkResult, type ObjectId } from './marks.js';
import { assertMigrated, DEFAULT_OUTBOX_SCHEMA, migrate, type MigrateOptions, type MigrateResult } from './migrations.js';
import { rebuildCache, type RebuildOptions, type RebuildSummary } from './rebuild.js';
import { searchCache, type SearchOptions, type SearchResult } from './search.js';
import { verifyIndexes } from './verify.js';
import { readStatus, retryDead, type OutboxStatus, type RetryOptions, type RetryResult } from './status.js';

/** The marks of a committed transaction, handed to the dispatcher after the commit. */
export interface CommittedTransaction {
  /** Ids (`pg_current_xact_id()` as text) of the transactions that wrote the marks; usually one. */
  readonly transactionIds: readonly string[];
  /** Schemas recorded with the marks. */
  readonly schemas: readonly string[];
  /** Objects marked, counted per mark call. */
  readonly objects: number;
}

/**
 * Runs after a transaction that marked objects has committed: drains its
 * objects inline, or sends a nudge to a queue. A dispatcher may throw; the
 * transaction helper logs and counts the failure and never passes it on.
 */
export interface Dispatcher {
  dispatch(committed: CommittedTransaction, outbox: SearchOutbox): Promise<void>;
}

/** Drains the committed transaction's own outbox rows in this process. */
export const inlineDispatcher: Dispatcher = {
  async dispatch(committed, outbox) {
    await outbox.drain({ transactionIds: committed.transactionIds });
  },
};

export interface SearchOutboxOptions {
  /** The application's database. */
  readonly db: Kysely<any>;
  /** Search index declarations, validated here unless already a registry. */
  readonly indexes: IndexRegistry | readonly SearchIndex[];
  /** Schema of the outbox table. Default: `search_outbox`. */
  readonly outboxSchema?: string;
  /** Default: silent. */
  readonly logger?: Logger;
  /**
   * The step after a commit: `inline` drains the transaction's objects in
   * this process, `none` leaves them to a drainer, and a custom dispatcher
   * can send them to a queue. Default: `inline`.
   */
  readonly dispatcher?: 'inline' | 'none' | Dispatcher;
  /** Attempts and backoff of failing objects. */
  readonly retry?: RetrySettings;
}

/** Counters of the transaction helper since the outbox was created. */
export interface DispatchStats {
  readonly dispatched: number;
  readonly dispatchFailures: number;
}

/** Transaction ids, schemas and object count that the marks of one helper transaction collect for its dispatch. */
interface CollectedMarks {
  readonly transactionIds: Set<string>;
  readonly schemas: Set<string>;
  objects: number;
}

/** The helper transaction, or nested savepoint, that a callback runs in. */
interface TransactionContext {
  /** Shared by a helper transaction and every call nested in it. */
  readonly collected: CollectedMarks;
  /**
   * Nested calls still running, shared like `collected`. The helper waits
   * for them before it commits, so that a nested call the callback did not
   * await still runs inside the transaction.
   */
  readonly running: Set<Promise<unknown>>;
  readonly trx: Transaction<any>;
  /** False once the transaction has ended; a callback that outlives it starts a new transaction. */
  open: boolean;
  /** True while a nested call runs in this context, to reject a second one running at the same time. */
  nestedRunning: boolean;
}

/** The outbox of one application: marks, the transaction helper, drain, rebuild, search and status. */
export class SearchOutbox {
  readonly db: Kysely<any>;
  readonly indexes: IndexRegistry;
  readonly outboxSchema: string;
  readonly logger: Logger;
  readonly #dispatcher: Dispatcher | null;
  readonly #drainer: Drainer;
  readonly #context = new AsyncLocalStorage<TransactionContext>();
  #dispatched = 0;
  #dispatchFailures = 0;

  constructor(options: SearchOutboxOptions) {
    const db: unknown = options?.db;
    if (typeof db !== 'object' || db === null || typeof (db as Kysely<any>).transaction !== 'function') {
      throw new ValidationError('options.db', db, 'must be a Kysely instance');
    }
    this.db = options.db;
    this.indexes = options.indexes instanceof IndexRegistry ? options.indexes : defineIndexes(options.indexes);
    this.outboxSchema = assertIdentifier('outboxSchema', options.outboxSchema ?? DEFAULT_OUTBOX_SCHEMA);
    this.logger = validateLogger(options.logger);
    this.#dispatcher = resolveDispatcher(options.dispatcher ?? 'inline');
    const retry: unknown = options.retry ?? {};
    if (typeof retry !== 'object' || retry === null || Array.isArray(retry)) {
      throw new ValidationError('retry', retry, 'must be an object with maxAttempts, backoffBaseMs or backoffMaxMs');
    }
    this.#drainer = new Drainer(this.db, this.outboxSchema, this.indexes, this.logger, retry);
  }

  get stats(): DispatchStats {
    return { dispatched: this.#dispatched, dispatchFailures: this.#dispatchFailures };
  }

  /**
   * Marks objects as changed, in one statement whatever the number of ids.
   * Call it with the transaction that made the change, so that the mark
   * commits or rolls back with it, savepoints included. On a plain Kysely
   * instance the mark is a statement of its own.
   */
  async mark(
    executor: Kysely<any> | Transaction<any>,
    objectType: string,
    ids: ObjectId | readonly ObjectId[],
    options?: MarkOptions,
  ): Promise<MarkResult> {
    return this.#record(await insertMarks(executor, this.outboxSchema, this.indexes, objectType, ids, 'upsert', options));
  }

  /**
   * Marks objects as deleted. The drain re-reads every object anyway, so this
   * differs from `mark` only in what the outbox records.
   */
  async markDeleted(
    executor: Kysely<any> | Transaction<any>,
    objectType: string,
    ids: ObjectId | readonly ObjectId[],
    options?: MarkOptions,
  ): Promise<MarkResult> {
    return this.#record(await insertMarks(executor, this.outboxSchema, this.indexes, objectType, ids, 'delete', options));
  }

  /**
   * Runs `callback` in a transaction and returns its result. After the
   * commit, the objects it marked are dispatched (drained inline by
   * default). A failure after the commit is logged and counted, never
   * thrown: the change is committed and the next drain picks it up.
   *
   * A call made inside another call's callback joins that transaction as a
   * savepoint: its failure rolls back only its own work, and its marks are
   * dispatched after the outer commit. Nested calls on one transaction must
   * run one at a time.
   */
  async transaction<T>(callback: (trx: Transaction<any>) => Promise<T>): Promise<T> {
    const outer = this.#context.getStore();
    if (outer?.open === true) return this.#nestedTransaction(outer, callback);

    const collected: CollectedMarks = { transactionIds: new Set(), schemas: new Set(), objects: 0 };
    const running = new Set<Promise<unknown>>();
    let context: TransactionContext | undefined;
    let result: T;
    try {
      result = await this.db.transaction().execute(async (trx) => {
        context = { collected, running, trx, open: true, nestedRunning: false };
        const root = context;
        try {
          return await this.#context.run(root, () => callback(trx));
        } finally {
          // Their own callers receive their outcomes, so only their end matters here.
          while (running.size > 0) await Promise.allSettled([...running]);
          root.open = false;
        }
      });
    } finally {
      if (context !== undefined) context.open = false;
    }
    if (collected.transactionIds.size > 0) await this.#dispatch(collected);
    return result;
  }

  async drain(options?: DrainOptions): Promise<DrainSummary> {
    return this.#drainer.drain(options);
  }

  async rebuild(options?: RebuildOptions): Promise<RebuildSummary> {
    return rebuildCache(this.db, this.outboxSchema, this.indexes, this.logger, options);
  }

  async search(options: SearchOptions): Promise<SearchResult[]> {
    return searchCache(this.db, this.indexes, options, this.logger);
  }

  async status(): Promise<OutboxStatus> {
    return readStatus(this.db, this.outboxSchema);
  }

  async retry(options?: RetryOptions): Promise<RetryResult> {
    const result = await retryDead(this.db, this.outboxSchema, this.indexes, options);
    this.logger.info('made dead outbox rows pending again', { ...options, retried: result.retried });
    return result;
  }

  /**
   * Checks that the database is ready for this code: the outbox schema is
   * migrated to the expected version, and every declared table and column
   * exists in `schema` (default `public`). Call it at startup.
   */
  async verify(options: { readonly schema?: string } = {}): Promise<void> {
    const schema = assertIdentifier('schema', options.schema ?? 'public');
    await assertMigrated(this.db, this.outboxSchema);
    await verifyIndexes(this.db, this.indexes, schema);
  }

  /** Runs the migrations into this outbox's schema; see `migrate`. */
  async migrate(options: Omit<MigrateOptions, 'outboxSchema'> = {}): Promise<MigrateResult> {
    return migrate(this.db, { logger: this.logger, ...options, outboxSchema: this.outboxSchema });
  }

  /** Runs a nested helper call as a savepoint of the outer helper transaction. */
  #nestedTransaction<T>(outer: TransactionContext, callback: (trx: Transaction<any>) => Promise<T>): Promise<T> {
    const nested = this.#runNested(outer, callback);
    outer.running.add(nested);
    const forget = (): void => {
      outer.running.delete(nested);
    };
    nested.then(forget, forget);
    return nested;
  }

  async #runNested<T>(outer: TransactionContext, callback: (trx: Transaction<any>) => Promise<T>): Promise<T> {
    if (outer.nestedRunning) {
      throw new SearchOutboxError(
        'A nested outbox.transaction() call started while another one was running in the same transaction; run nested calls one at a time',
      );
    }
    outer.nestedRunning = true;
    const savepoint = sql.id(`search_outbox_nested_${randomUUID().replaceAll('-', '')}`);
    const inner: TransactionContext = {
      collected: outer.collected,
      running: outer.running,
      trx: outer.trx,
      open: true,
      nestedRunning: false,
    };
    try {
      await sql`SAVEPOINT ${savepoint}`.execute(outer.trx);
      try {
        const result = await this.#context.run(inner, () => callback(outer.trx));
        await sql`RELEASE SAVEPOINT ${savepoint}`.execute(outer.trx);
        return result;
      } catch (error) {
        // If this fails too, the outer transaction cannot commit, and the
        // callback's error is the one that explains why.
        await sql`ROLLBACK TO SAVEPOINT ${savepoint}`.execute(outer.trx).catch(() => undefined);
        throw error;
      }
    } finally {
      inner.open = false;
      outer.nestedRunning = false;
    }
  }

  #record(result: MarkResult): MarkResult {
    const collected = this.#context.getStore()?.collected;
    if (collected !== undefined && result.transactionId !== null) {
      collected.transactionIds.add(result.transactionId);
      collected.objects += result.objects;
      if (result.schema !== null) collected.schemas.add(result.schema);
    }
    return result;
  }

  async #dispatch(collected: CollectedMarks): Promise<void> {
    if (this.#dispatcher === null) return;
    const committed: CommittedTransaction = {
      transactionIds: [...collected.transactionIds],
      schemas: [...collected.schemas],
      objects: collected.objects,
    };
    try {
      await this.#dispatcher.dispatch(committed, this);
      this.#dispatched += 1;
    } catch (error) {
      this.#dispatchFailures += 1;
      try {
        this.logger.error('dispatch after commit failed; the committed marks wait for the next drain', {
          transactionIds: committed.transactionIds,
          objects: committed.objects,
          error: errorMessage(error),
          dispatchFailures: this.#dispatchFailures,
        });
      } catch {
        // The change is committed: a failing logger must not make the caller
        // retry it. The failure is still counted in `stats`.
      }
    }
  }
}

/** Creates the outbox of an application; validates its options and index declarations. */
export function createSearchOutbox(options: SearchOutboxOptions): SearchOutbox {
  return new SearchOutbox(options);
}

function resolveDispatcher(dispatcher: 'inline' | 'none' | Dispatcher): Dispatcher | null {
  if (dispatcher === 'inline') return inlineDispatcher;
  if (dispatcher === 'none') return null;
  if (typeof dispatcher === 'object' && dispatcher !== null && typeof dispatcher.dispatch === 'function') {
    return dispatcher;
  }
  throw new ValidationError('dispatcher', dispatcher, 'must be "inline", "none" or an object with a dispatch method');
}
