import { createSearchOutbox, errorMessage, type Dispatcher, type SearchOutbox } from '@search-outbox/core';
import fc from 'fast-check';
import { sql, type Kysely, type RawBuilder, type Transaction } from 'kysely';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';

/**
 * A large randomized run. Eight writers and four drainers share one
 * database for a fixed number of write operations, then one final drain
 * must leave the cache equal to a full rebuild computed in JavaScript from
 * the source tables. SEARCH_OUTBOX_LARGE=1 runs 10,000 operations, and the
 * default (CI) size is 1,000.
 *
 * The operations come from a seeded generator, which is random unless
 * SEARCH_OUTBOX_SEED is set. Writers and drainers really run at once, so a
 * seed reproduces the operations but not their interleaving. Every assertion
 * message starts with the seed and the counts of the run, and the counts
 * are also stored in the test's `meta` for the JSON report.
 *
 * Three object types take part: sites, devices and virtual chassis. A
 * device's `virtual_chassis` field is the name of its chassis, so a writer
 * that renames, deletes or re-creates a chassis marks the chassis's devices
 * too. A device's site is only a display attribute, read at search time and
 * never cached, so the devices here have no site and a site write marks
 * only the site.
 */

const LARGE = process.env.SEARCH_OUTBOX_LARGE === '1';
const OPERATIONS = LARGE ? 10_000 : 1_000;
const WRITERS = 8;
const DRAINERS = 4;
const SITE_IDS = 300;
const DEVICE_IDS = 200;
const CHASSIS_IDS = 12;
const OBJECT_TYPES = ['dcim.site', 'dcim.device', 'dcim.virtualchassis'] as const;
const SEED = readSeed();

/**
 * Keys of the writers' two-key advisory locks, which never conflict with
 * the drain's one-key object locks. Every writer transaction takes its
 * locks in ascending key order before its first write, so writer
 * transactions never wait on each other in a cycle. Autocommit statements
 * take no advisory lock, but each locks at most one row, so they cannot
 * close a cycle either.
 */
const DEVICE_GROUP_LOCK = { classId: 7000, objectId: 0 } as const;
const SITE_LOCK_CLASS = 7001;
const DEVICE_LOCK_CLASS = 7002;

type SiteColumn = 'facility' | 'slug' | 'description' | 'physical_address' | 'shipping_address' | 'comments';

interface CustomFields {
  readonly code?: string | null;
  readonly rank?: number;
}

interface SiteValues {
  readonly name: string;
  readonly facility: string | null;
  readonly slug: string | null;
  readonly description: string | null;
  readonly comments: string | null;
  readonly customFields: CustomFields;
}

interface DeviceValues {
  readonly name: string | null;
  readonly serial: string | null;
  readonly mtu: number | null;
  readonly decommissioned: boolean;
  /** Chassis that the device joins if it exists when the step runs, else none. Always null in autocommit mode. */
  readonly chassisId: number | null;
}

type DeviceUpdate =
  | { readonly column: 'name' | 'serial'; readonly value: string | null }
  | { readonly column: 'mtu'; readonly value: number | null }
  | { readonly column: 'decommissioned'; readonly value: boolean };

type WriteStep =
  | { readonly kind: 'siteUpsert'; readonly id: number; readonly site: SiteValues }
  | { readonly kind: 'siteRename'; readonly id: number; readonly name: string }
  | { readonly kind: 'siteUpdate'; readonly id: number; readonly column: SiteColumn; readonly value: string | null }
  | { readonly kind: 'siteCustomFields'; readonly id: number; readonly patch: CustomFields }
  | { readonly kind: 'siteDelete'; readonly id: number }
  | { readonly kind: 'siteRecreate'; readonly id: number; readonly site: SiteValues }
  | { readonly kind: 'siteBulkUpdate'; readonly ids: readonly number[]; readonly description: string | null }
  | { readonly kind: 'deviceUpsert'; readonly id: number; readonly device: DeviceValues }
  | { readonly kind: 'deviceUpdate'; readonly id: number; readonly update: DeviceUpdate }
  | { readonly kind: 'deviceMove'; readonly id: number; readonly chassisId: number | null }
  | { readonly kind: 'deviceDelete'; readonly id: number }
  | { readonly kind: 'deviceRecreate'; readonly id: number; readonly device: DeviceValues }
  | { readonly kind: 'deviceBulkUpdate'; readonly ids: readonly number[]; readonly mtu: number | null }
  | { readonly kind: 'chassisUpsert'; readonly id: number; readonly name: string }
  | { readonly kind: 'chassisDelete'; readonly id: number }
  | { readonly kind: 'chassisRecreate'; readonly id: number; readonly name: string };

/** A write operation, or a step that structures them: a pause or a savepoint. */
type Step =
  | WriteStep
  | { readonly kind: 'pause'; readonly ms: number }
  | { readonly kind: 'savepoint'; readonly steps: readonly Step[]; readonly rollback: boolean };

interface WriterTransaction {
  /**
   * `helper` runs the steps in `outbox.transaction` (drained inline after
   * the commit), `plain` in `db.transaction().execute`, and `autocommit`
   * runs each step's statements and marks on the pool with no transaction.
   */
  readonly mode: 'helper' | 'plain' | 'autocommit';
  readonly steps: readonly Step[];
  /** Roll the whole transaction back after its last step. Always false in autocommit mode. */
  readonly rollback: boolean;
  readonly pauseAfterMs: number;
}

type DrainerStep =
  | { readonly kind: 'drain'; readonly batchSize: number; readonly maxBatches: number | undefined }
  | { readonly kind: 'pause'; readonly ms: number };

interface InitialData {
  readonly sites: readonly { readonly id: number; readonly site: SiteValues }[];
  readonly chassisNames: readonly string[];
  readonly devices: readonly { readonly id: number; readonly device: DeviceValues }[];
}

interface Scenario {
  readonly initial: InitialData;
  /** One list of transactions per writer, with exactly OPERATIONS write operations in total. */
  readonly writers: readonly (readonly WriterTransaction[])[];
  /** One program per drainer, repeated until the writers are done. */
  readonly drainers: readonly (readonly DrainerStep[])[];
}

/** Counts of one run, reported in assertion messages and in the test's `meta`. */
interface RunCounts {
  /** Write operations run, including those that a rollback undid. */
  operations: number;
  operationsByKind: Record<string, number>;
  /** Calls of `mark` and `markDeleted`. */
  marks: number;
  transactionsCommitted: number;
  transactionsRolledBack: number;
  /** Write operations run in autocommit mode. */
  autocommitOperations: number;
  savepointsReleased: number;
  savepointsRolledBack: number;
  drainCalls: number;
  /** Outbox rows claimed by the concurrent drainers. */
  drainerClaims: number;
  /** Outbox rows claimed by the drains that `outbox.transaction` runs after its commits. */
  inlineClaims: number;
  /** Outbox rows claimed by the final drain, after the writers and drainers stopped. */
  finalClaims: number;
}

/** Thrown inside a transaction to roll it back on purpose. */
class IntendedRollback extends Error {}

// Generators. Values repeat on purpose, so that writes often leave a row
// unchanged, empty a field or hit the same id as another writer.

const siteIdArbitrary = fc.integer({ min: 1, max: SITE_IDS });
const deviceIdArbitrary = fc.integer({ min: 1, max: DEVICE_IDS });
const chassisIdArbitrary = fc.integer({ min: 1, max: CHASSIS_IDS });
const textArbitrary = fc.constantFrom<string | null>(null, '', 'alpha', 'Beta site', '50%_off', "O'Brien", 'Ünïcødé', '  ');
const nameArbitrary = fc.constantFrom('', 'Alpha', 'Bravo', 'charlie', 'Delta Site', 'Ünïcødé');
const mtuArbitrary = fc.constantFrom<number | null>(null, 0, -1, 1500, 9000);
const pauseArbitrary = fc.integer({ min: 0, max: 3 });
const customFieldsArbitrary: fc.Arbitrary<CustomFields> = fc.record(
  { code: fc.constantFrom<string | null>(null, '', 'C-1', 'c-2'), rank: fc.integer({ min: -2, max: 3 }) },
  { requiredKeys: [] },
);

const siteArbitrary: fc.Arbitrary<SiteValues> = fc.record({
  name: nameArbitrary,
  facility: textArbitrary,
  slug: textArbitrary,
  description: textArbitrary,
  comments: textArbitrary,
  customFields: customFieldsArbitrary,
});

function deviceArbitrary(chassis: fc.Arbitrary<number | null>): fc.Arbitrary<DeviceValues> {
  return fc.record({
    name: fc.constantFrom<string | null>(null, '', 'core-sw-1', 'Edge Router', "O'Brien", 'Ünïcødé'),
    serial: fc.constantFrom<string | null>(null, '', 'SN-001', 'sn 002', '50%_off'),
    mtu: mtuArbitrary,
    decommissioned: fc.integer({ min: 0, max: 3 }).map((draw) => draw === 0),
    chassisId: chassis,
  });
}

const chassisNameArbitrary = fc.constantFrom('', 'vc-1', 'Stack A', "O'Brien", 'Ünïcødé');
const optionalChassisArbitrary = fc.option(chassisIdArbitrary, { nil: null, freq: 3 });

const deviceUpdateArbitrary: fc.Arbitrary<DeviceUpdate> = fc.oneof(
  fc.record({ column: fc.constantFrom<'name' | 'serial'>('name', 'serial'), value: textArbitrary }),
  fc.record({ column: fc.constant('mtu' as const), value: mtuArbitrary }),
  fc.record({ column: fc.constant('decommissioned' as const), value: fc.boolean() }),
);

/** Write steps that need no transaction: each is a few single-row statements and one mark. */
function autocommitWriteArbitraries(): fc.WeightedArbitrary<WriteStep>[] {
  return [
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('siteUpsert' as const), id: siteIdArbitrary, site: siteArbitrary }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('siteRename' as const), id: siteIdArbitrary, name: nameArbitrary }) },
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant('siteUpdate' as const),
        id: siteIdArbitrary,
        column: fc.constantFrom<SiteColumn>(
          'facility',
          'slug',
          'description',
          'physical_address',
          'shipping_address',
          'comments',
        ),
        value: textArbitrary,
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({ kind: fc.constant('siteCustomFields' as const), id: siteIdArbitrary, patch: customFieldsArbitrary }),
    },
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('siteDelete' as const), id: siteIdArbitrary }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('siteRecreate' as const), id: siteIdArbitrary, site: siteArbitrary }) },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('siteBulkUpdate' as const),
        ids: fc.uniqueArray(siteIdArbitrary, { minLength: 2, maxLength: 25 }),
        description: textArbitrary,
      }),
    },
    {
      weight: 5,
      arbitrary: fc.record({
        kind: fc.constant('deviceUpsert' as const),
        id: deviceIdArbitrary,
        device: deviceArbitrary(fc.constant(null)),
      }),
    },
    {
      weight: 5,
      arbitrary: fc.record({ kind: fc.constant('deviceUpdate' as const), id: deviceIdArbitrary, update: deviceUpdateArbitrary }),
    },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('deviceDelete' as const), id: deviceIdArbitrary }) },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('deviceRecreate' as const),
        id: deviceIdArbitrary,
        device: deviceArbitrary(fc.constant(null)),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('deviceBulkUpdate' as const),
        ids: fc.uniqueArray(deviceIdArbitrary, { minLength: 2, maxLength: 25 }),
        mtu: mtuArbitrary,
      }),
    },
  ];
}

/**
 * Write steps that need a transaction, because they change a chassis
 * reference: only transactions take the device group lock that keeps a
 * chassis and the set of its devices stable until the commit.
 */
function transactionOnlyWriteArbitraries(): fc.WeightedArbitrary<WriteStep>[] {
  return [
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('deviceUpsert' as const),
        id: deviceIdArbitrary,
        device: deviceArbitrary(optionalChassisArbitrary),
      }),
    },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('deviceMove' as const),
        id: deviceIdArbitrary,
        chassisId: optionalChassisArbitrary,
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('deviceRecreate' as const),
        id: deviceIdArbitrary,
        device: deviceArbitrary(optionalChassisArbitrary),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('chassisUpsert' as const), id: chassisIdArbitrary, name: chassisNameArbitrary }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('chassisDelete' as const), id: chassisIdArbitrary }) },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('chassisRecreate' as const), id: chassisIdArbitrary, name: chassisNameArbitrary }),
    },
  ];
}

const autocommitStepArbitrary: fc.Arbitrary<Step> = fc.oneof(...autocommitWriteArbitraries());

const { step: transactionStepArbitrary } = fc.letrec<{ step: Step }>((tie) => ({
  step: fc.oneof(
    { maxDepth: 3, depthIdentifier: 'savepoint' },
    ...autocommitWriteArbitraries(),
    ...transactionOnlyWriteArbitraries(),
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('pause' as const), ms: pauseArbitrary }) },
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant('savepoint' as const),
        steps: fc.array(tie('step'), { minLength: 1, maxLength: 3 }),
        rollback: fc.boolean(),
      }),
    },
  ),
}));

const transactionArbitrary: fc.Arbitrary<WriterTransaction> = fc.oneof(
  {
    weight: 2,
    arbitrary: fc.record({
      mode: fc.constantFrom<WriterTransaction['mode']>('helper', 'plain'),
      steps: fc.array(transactionStepArbitrary, { minLength: 1, maxLength: 6 }),
      rollback: fc.integer({ min: 0, max: 6 }).map((draw) => draw === 0),
      pauseAfterMs: pauseArbitrary,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      mode: fc.constant('autocommit' as const),
      steps: fc.array(autocommitStepArbitrary, { minLength: 1, maxLength: 4 }),
      rollback: fc.constant(false),
      pauseAfterMs: pauseArbitrary,
    }),
  },
);

const drainerStepArbitrary: fc.Arbitrary<DrainerStep> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('drain' as const),
      batchSize: fc.constantFrom(1, 2, 3, 5, 10, 25, 100, 500),
      maxBatches: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('pause' as const), ms: fc.integer({ min: 0, max: 5 }) }) },
);

const initialDataArbitrary: fc.Arbitrary<InitialData> = fc.record({
  sites: fc.uniqueArray(fc.record({ id: siteIdArbitrary, site: siteArbitrary }), {
    selector: (entry) => entry.id,
    minLength: Math.floor(SITE_IDS / 3),
    maxLength: Math.floor(SITE_IDS / 2),
  }),
  chassisNames: fc.array(chassisNameArbitrary, { minLength: CHASSIS_IDS, maxLength: CHASSIS_IDS }),
  devices: fc.uniqueArray(fc.record({ id: deviceIdArbitrary, device: deviceArbitrary(optionalChassisArbitrary) }), {
    selector: (entry) => entry.id,
    minLength: Math.floor(DEVICE_IDS / 3),
    maxLength: Math.floor(DEVICE_IDS / 2),
  }),
});

function readSeed(): number {
  const text = process.env.SEARCH_OUTBOX_SEED;
  if (text === undefined || text === '') return Math.floor(Math.random() * 2 ** 31);
  const seed = Number(text);
  if (!Number.isSafeInteger(seed)) {
    throw new Error(`SEARCH_OUTBOX_SEED is "${text}", which is not an integer; set it to the seed of a failure message`);
  }
  return seed;
}

/** Counts the write operations of `steps`, savepoints included. */
function countOperations(steps: readonly Step[]): number {
  let operations = 0;
  for (const step of steps) {
    if (step.kind === 'savepoint') operations += countOperations(step.steps);
    else if (step.kind !== 'pause') operations += 1;
  }
  return operations;
}

/**
 * Returns the steps up to and including the `budget`-th write operation.
 * Savepoints left with no write operation are dropped.
 */
function keepOperations(steps: readonly Step[], budget: number): Step[] {
  const kept: Step[] = [];
  let used = 0;
  for (const step of steps) {
    if (used >= budget) break;
    if (step.kind === 'pause') {
      kept.push(step);
    } else if (step.kind === 'savepoint') {
      const inner = keepOperations(step.steps, budget - used);
      const innerOperations = countOperations(inner);
      if (innerOperations > 0) kept.push({ ...step, steps: inner });
      used += innerOperations;
    } else {
      kept.push(step);
      used += 1;
    }
  }
  return kept;
}

/**
 * Generates the scenario of `seed`. Transactions are drawn from one stream
 * and dealt to the writers in turn until each has its share of the
 * operations. The last transaction of a writer is cut to fit its share.
 */
function generateScenario(seed: number): Scenario {
  const [sample] = fc.sample(
    fc.noBias(
      fc.tuple(
        initialDataArbitrary,
        fc.array(fc.array(drainerStepArbitrary, { minLength: 1, maxLength: 8 }), { minLength: DRAINERS, maxLength: DRAINERS }),
        fc.infiniteStream(transactionArbitrary, { noHistory: true }),
      ),
    ),
    { seed, numRuns: 1 },
  );
  if (sample === undefined) throw new Error(`fast-check generated no scenario for seed ${seed}`);
  const [initial, drainers, transactions] = sample;
  const stream = transactions[Symbol.iterator]();

  const writers = Array.from({ length: WRITERS }, (_, writer) => {
    const share = Math.floor(OPERATIONS / WRITERS) + (writer < OPERATIONS % WRITERS ? 1 : 0);
    const list: WriterTransaction[] = [];
    let remaining = share;
    while (remaining > 0) {
      const next = stream.next();
      if (next.done === true) throw new Error('the infinite stream of transactions ended');
      const steps = keepOperations(next.value.steps, remaining);
      remaining -= countOperations(steps);
      list.push({ ...next.value, steps });
    }
    return list;
  });
  return { initial, writers, drainers };
}

let database: TestDatabase;
let outbox: SearchOutbox;
let writerOutboxes: SearchOutbox[];
let drainerOutboxes: SearchOutbox[];
const logLines: LogLine[] = [];
const counts: RunCounts = {
  operations: 0,
  operationsByKind: {},
  marks: 0,
  transactionsCommitted: 0,
  transactionsRolledBack: 0,
  autocommitOperations: 0,
  savepointsReleased: 0,
  savepointsRolledBack: 0,
  drainCalls: 0,
  drainerClaims: 0,
  inlineClaims: 0,
  finalClaims: 0,
};

/** Drains a committed transaction's own rows, as the inline dispatcher does, and counts the rows it claimed. */
const countingInlineDispatcher: Dispatcher = {
  async dispatch(committed, dispatchingOutbox) {
    const summary = await dispatchingOutbox.drain({ transactionIds: committed.transactionIds });
    counts.inlineClaims += summary.claimed;
  },
};

beforeAll(async () => {
  database = await createTestDatabase('large_run');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
  const logger = capturingLogger(logLines);
  // Each writer and each drainer has its own pool, as separate processes would.
  writerOutboxes = Array.from({ length: WRITERS }, () =>
    createSearchOutbox({
      db: database.connect({ max: 2 }),
      indexes: FIXTURE_INDEXES,
      dispatcher: countingInlineDispatcher,
      logger,
    }),
  );
  drainerOutboxes = Array.from({ length: DRAINERS }, () =>
    createSearchOutbox({ db: database.connect({ max: 1 }), indexes: FIXTURE_INDEXES, dispatcher: 'none', logger }),
  );
});

afterAll(async () => {
  await database?.destroy();
});

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function siteRow(id: number, site: SiteValues): Record<string, unknown> {
  return {
    id,
    name: site.name,
    facility: site.facility,
    slug: site.slug,
    description: site.description,
    comments: site.comments,
    custom_field_data: JSON.stringify(site.customFields),
  };
}

/** Returns an SQL expression for the chassis id, which is NULL when the chassis does not exist as the statement runs. */
function existingChassis(chassisId: number | null): RawBuilder<unknown> | null {
  return chassisId === null ? null : sql`(SELECT id FROM virtual_chassis WHERE id = ${chassisId})`;
}

function deviceRow(id: number, device: DeviceValues): Record<string, unknown> {
  return {
    id,
    name: device.name,
    serial: device.serial,
    mtu: device.mtu,
    decommissioned: device.decommissioned,
    virtual_chassis_id: existingChassis(device.chassisId),
  };
}

async function upsert(executor: Kysely<any>, tableName: string, row: Record<string, unknown>): Promise<void> {
  await executor
    .insertInto(tableName)
    .values(row)
    .onConflict((conflict) => conflict.column('id').doUpdateSet(row))
    .execute();
}

/** Removes every device from a chassis and marks those devices, so that their cache rows lose the chassis name. */
async function detachDevices(executor: Kysely<any>, writer: SearchOutbox, chassisId: number): Promise<void> {
  const detached = await executor
    .updateTable('device')
    .set({ virtual_chassis_id: null })
    .where('virtual_chassis_id', '=', chassisId)
    .returning('id')
    .execute();
  if (detached.length > 0) await markObjects(executor, writer, 'dcim.device', detached.map((row) => row.id as string));
}

async function markObjects(
  executor: Kysely<any>,
  writer: SearchOutbox,
  objectType: string,
  ids: number | readonly (number | string)[],
  deleted = false,
): Promise<void> {
  counts.marks += 1;
  if (deleted) await writer.markDeleted(executor, objectType, ids);
  else await writer.mark(executor, objectType, ids);
}

/**
 * Runs one write operation and its marks on `executor`. A write and its
 * marks always share a savepoint level, as application code would do them.
 */
async function runWrite(executor: Kysely<any>, writer: SearchOutbox, step: WriteStep): Promise<void> {
  counts.operations += 1;
  counts.operationsByKind[step.kind] = (counts.operationsByKind[step.kind] ?? 0) + 1;

  switch (step.kind) {
    case 'siteUpsert':
      await upsert(executor, 'site', siteRow(step.id, step.site));
      await markObjects(executor, writer, 'dcim.site', step.id);
      return;
    case 'siteRename':
      await executor.updateTable('site').set({ name: step.name }).where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.site', step.id);
      return;
    case 'siteUpdate':
      await executor.updateTable('site').set({ [step.column]: step.value }).where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.site', step.id);
      return;
    case 'siteCustomFields':
      await executor
        .updateTable('site')
        .set({ custom_field_data: sql`custom_field_data || ${JSON.stringify(step.patch)}::jsonb` })
        .where('id', '=', step.id)
        .execute();
      await markObjects(executor, writer, 'dcim.site', step.id);
      return;
    case 'siteDelete':
      await executor.deleteFrom('site').where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.site', step.id, true);
      return;
    case 'siteRecreate':
      await executor.deleteFrom('site').where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.site', step.id, true);
      await upsert(executor, 'site', siteRow(step.id, step.site));
      await markObjects(executor, writer, 'dcim.site', step.id);
      return;
    case 'siteBulkUpdate':
      await updateEach(executor, 'site', step.ids, { description: step.description });
      await markObjects(executor, writer, 'dcim.site', step.ids);
      return;
    case 'deviceUpsert':
      await upsert(executor, 'device', deviceRow(step.id, step.device));
      await markObjects(executor, writer, 'dcim.device', step.id);
      return;
    case 'deviceUpdate':
      await executor
        .updateTable('device')
        .set({ [step.update.column]: step.update.value })
        .where('id', '=', step.id)
        .execute();
      await markObjects(executor, writer, 'dcim.device', step.id);
      return;
    case 'deviceMove':
      await executor
        .updateTable('device')
        .set({ virtual_chassis_id: existingChassis(step.chassisId) })
        .where('id', '=', step.id)
        .execute();
      await markObjects(executor, writer, 'dcim.device', step.id);
      return;
    case 'deviceDelete':
      await executor.deleteFrom('device').where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.device', step.id, true);
      return;
    case 'deviceRecreate':
      await executor.deleteFrom('device').where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.device', step.id, true);
      await upsert(executor, 'device', deviceRow(step.id, step.device));
      await markObjects(executor, writer, 'dcim.device', step.id);
      return;
    case 'deviceBulkUpdate':
      await updateEach(executor, 'device', step.ids, { mtu: step.mtu });
      await markObjects(executor, writer, 'dcim.device', step.ids);
      return;
    case 'chassisUpsert': {
      await upsert(executor, 'virtual_chassis', { id: step.id, name: step.name });
      await markObjects(executor, writer, 'dcim.virtualchassis', step.id);
      const members = await executor.selectFrom('device').select('id').where('virtual_chassis_id', '=', step.id).execute();
      if (members.length > 0) await markObjects(executor, writer, 'dcim.device', members.map((row) => row.id as string));
      return;
    }
    case 'chassisDelete':
      await detachDevices(executor, writer, step.id);
      await executor.deleteFrom('virtual_chassis').where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.virtualchassis', step.id, true);
      return;
    case 'chassisRecreate':
      await detachDevices(executor, writer, step.id);
      await executor.deleteFrom('virtual_chassis').where('id', '=', step.id).execute();
      await markObjects(executor, writer, 'dcim.virtualchassis', step.id, true);
      await upsert(executor, 'virtual_chassis', { id: step.id, name: step.name });
      await markObjects(executor, writer, 'dcim.virtualchassis', step.id);
  }
}

/**
 * Updates several rows of a table: in one statement inside a transaction,
 * and row by row outside one, because a single UPDATE of several rows
 * could deadlock with a writer transaction that holds one of them and waits
 * for another.
 */
async function updateEach(
  executor: Kysely<any>,
  tableName: string,
  ids: readonly number[],
  values: Record<string, unknown>,
): Promise<void> {
  if (executor.isTransaction) {
    await executor.updateTable(tableName).set(values).where('id', 'in', ids).execute();
    return;
  }
  for (const id of ids) await executor.updateTable(tableName).set(values).where('id', '=', id).execute();
}

async function runStep(
  executor: Kysely<any>,
  writer: SearchOutbox,
  step: Step,
  savepoints: { next: number },
): Promise<void> {
  if (step.kind === 'pause') {
    await delay(step.ms);
    return;
  }
  if (step.kind !== 'savepoint') {
    await runWrite(executor, writer, step);
    return;
  }

  const name = sql.id(`large_run_savepoint_${savepoints.next}`);
  savepoints.next += 1;
  await sql`SAVEPOINT ${name}`.execute(executor);
  for (const inner of step.steps) await runStep(executor, writer, inner, savepoints);
  if (step.rollback) {
    await sql`ROLLBACK TO SAVEPOINT ${name}`.execute(executor);
    counts.savepointsRolledBack += 1;
  } else {
    await sql`RELEASE SAVEPOINT ${name}`.execute(executor);
    counts.savepointsReleased += 1;
  }
}

interface WriterLocks {
  /** `exclusive` when the transaction writes a chassis, `shared` when it writes devices only, else `none`. */
  readonly deviceGroup: 'exclusive' | 'shared' | 'none';
  /** [lock class, object id] pairs in ascending order. */
  readonly objects: readonly (readonly [number, number])[];
}

/**
 * Lists the advisory locks that a transaction takes before its first write.
 * Writers of the same site or device take turns on its lock. A chassis
 * write also changes which devices belong to the chassis, or their cached
 * chassis name, so it takes the device group lock exclusively, and every
 * device write takes it shared. Without it, a device could join a chassis
 * after the chassis writer has marked the chassis's devices, or after it
 * has detached them to delete the chassis.
 */
function planLocks(steps: readonly Step[]): WriterLocks {
  const sites = new Set<number>();
  const devices = new Set<number>();
  let writesChassis = false;
  const visit = (list: readonly Step[]): void => {
    for (const step of list) {
      switch (step.kind) {
        case 'pause':
          break;
        case 'savepoint':
          visit(step.steps);
          break;
        case 'siteBulkUpdate':
          step.ids.forEach((id) => sites.add(id));
          break;
        case 'deviceBulkUpdate':
          step.ids.forEach((id) => devices.add(id));
          break;
        case 'chassisUpsert':
        case 'chassisDelete':
        case 'chassisRecreate':
          writesChassis = true;
          break;
        default:
          if (step.kind.startsWith('site')) sites.add(step.id);
          else devices.add(step.id);
      }
    }
  };
  visit(steps);

  const byId = (a: number, b: number): number => a - b;
  const objects: [number, number][] = [
    ...[...sites].sort(byId).map((id): [number, number] => [SITE_LOCK_CLASS, id]),
    ...[...devices].sort(byId).map((id): [number, number] => [DEVICE_LOCK_CLASS, id]),
  ];
  if (writesChassis) return { deviceGroup: 'exclusive', objects };
  if (devices.size > 0) return { deviceGroup: 'shared', objects };
  return { deviceGroup: 'none', objects };
}

async function takeWriterLocks(trx: Transaction<any>, locks: WriterLocks): Promise<void> {
  // The device group key is below every object key, so it comes first.
  const { classId, objectId } = DEVICE_GROUP_LOCK;
  if (locks.deviceGroup === 'exclusive') {
    await sql`SELECT pg_advisory_xact_lock(${classId}::int, ${objectId}::int)`.execute(trx);
  }
  if (locks.deviceGroup === 'shared') {
    await sql`SELECT pg_advisory_xact_lock_shared(${classId}::int, ${objectId}::int)`.execute(trx);
  }
  if (locks.objects.length === 0) return;
  await sql`
    SELECT count(pg_advisory_xact_lock(k.class_id, k.object_id)) FROM (
      SELECT class_id, object_id FROM unnest(${locks.objects.map(([classId]) => classId)}::int[],
                                             ${locks.objects.map(([, id]) => id)}::int[]) AS u(class_id, object_id)
      ORDER BY class_id, object_id
    ) AS k
  `.execute(trx);
}

async function runTransaction(writer: SearchOutbox, transaction: WriterTransaction): Promise<void> {
  if (transaction.mode === 'autocommit') {
    for (const step of transaction.steps) {
      await runStep(writer.db, writer, step, { next: 0 });
      if (step.kind !== 'pause') counts.autocommitOperations += 1;
    }
    return;
  }

  const body = async (trx: Transaction<any>): Promise<void> => {
    await takeWriterLocks(trx, planLocks(transaction.steps));
    const savepoints = { next: 0 };
    for (const step of transaction.steps) await runStep(trx, writer, step, savepoints);
    if (transaction.rollback) throw new IntendedRollback();
  };
  try {
    if (transaction.mode === 'helper') await writer.transaction(body);
    else await writer.db.transaction().execute(body);
    counts.transactionsCommitted += 1;
  } catch (error) {
    if (!(error instanceof IntendedRollback)) throw error;
    counts.transactionsRolledBack += 1;
  }
}

async function runWriter(index: number, transactions: readonly WriterTransaction[]): Promise<void> {
  const writer = writerOutboxes[index]!;
  for (const [position, transaction] of transactions.entries()) {
    try {
      await runTransaction(writer, transaction);
    } catch (error) {
      throw new Error(
        `writer ${index} failed in its transaction ${position} (${transaction.mode} mode): ${errorMessage(error)}`,
        { cause: error },
      );
    }
    await delay(transaction.pauseAfterMs);
  }
}

/** Repeats the drainer's program until the writers are done, so drains overlap every phase of the writers. */
async function runDrainer(index: number, program: readonly DrainerStep[], writersDone: () => boolean): Promise<void> {
  const drainer = drainerOutboxes[index]!;
  do {
    for (const step of program) {
      if (step.kind === 'pause') {
        await delay(step.ms);
        continue;
      }
      try {
        const summary = await drainer.drain({ batchSize: step.batchSize, maxBatches: step.maxBatches });
        counts.drainCalls += 1;
        counts.drainerClaims += summary.claimed;
      } catch (error) {
        throw new Error(`drainer ${index} failed: ${errorMessage(error)}`, { cause: error });
      }
    }
  } while (!writersDone());
}

async function insertInitialData(initial: InitialData): Promise<void> {
  await database.db.insertInto('site').values(initial.sites.map(({ id, site }) => siteRow(id, site))).execute();
  await database.db
    .insertInto('virtual_chassis')
    .values(initial.chassisNames.map((name, position) => ({ id: position + 1, name })))
    .execute();
  await database.db.insertInto('device').values(initial.devices.map(({ id, device }) => deviceRow(id, device))).execute();

  await outbox.mark(database.db, 'dcim.site', initial.sites.map(({ id }) => id));
  await outbox.mark(database.db, 'dcim.virtualchassis', initial.chassisNames.map((_, position) => position + 1));
  await outbox.mark(database.db, 'dcim.device', initial.devices.map(({ id }) => id));
  await outbox.drain();
}

/** Object ids that have cache rows but no source row, as "type|id". */
async function readOrphanedObjects(): Promise<string[]> {
  const orphans: string[] = [];
  for (const objectType of OBJECT_TYPES) {
    const index = FIXTURE_INDEXES.find((candidate) => candidate.objectType === objectType)!;
    const result = await sql<{ object_id: string }>`
      SELECT DISTINCT c.object_id FROM search_cache c
      WHERE c.object_type = ${objectType}
        AND NOT EXISTS (SELECT 1 FROM ${sql.table(index.table)} s WHERE s.id::text = c.object_id)
      ORDER BY 1
    `.execute(database.db);
    orphans.push(...result.rows.map((row) => `${objectType}|${row.object_id}`));
  }
  return orphans;
}

async function readOutboxStates(): Promise<Record<string, number>> {
  const result = await sql<{ state: string; count: string }>`
    SELECT state, count(*) AS count FROM search_outbox.outbox GROUP BY state
  `.execute(database.db);
  return Object.fromEntries(result.rows.map((row) => [row.state, Number(row.count)]));
}

function describeRun(): string {
  const replay = `SEARCH_OUTBOX_SEED=${SEED}${LARGE ? ' SEARCH_OUTBOX_LARGE=1' : ''}`;
  return (
    `seed ${SEED} (replay the operations with ${replay}): ` +
    `${counts.operations} write operations by ${WRITERS} writers, ` +
    `${counts.transactionsCommitted} transactions committed, ${counts.transactionsRolledBack} rolled back, ` +
    `${counts.autocommitOperations} operations in autocommit mode, ` +
    `${counts.savepointsReleased} savepoints released, ${counts.savepointsRolledBack} rolled back, ${counts.marks} marks; ` +
    `rows claimed: ${counts.drainerClaims} by ${DRAINERS} drainers in ${counts.drainCalls} drains, ` +
    `${counts.inlineClaims} inline after commits, ${counts.finalClaims} by the final drain`
  );
}

test(
  'large randomized run matches a full rebuild',
  async ({ task }) => {
    const scenario = generateScenario(SEED);
    await insertInitialData(scenario.initial);

    let writersDone = false;
    const writers = Promise.allSettled(scenario.writers.map((transactions, index) => runWriter(index, transactions))).finally(
      () => {
        writersDone = true;
      },
    );
    const drainers = Promise.allSettled(
      scenario.drainers.map((program, index) => runDrainer(index, program, () => writersDone)),
    );
    const settled = [...(await writers), ...(await drainers)];
    const final = await outbox.drain({ batchSize: 50 });
    counts.finalClaims = final.claimed;
    Object.assign(task.meta, { largeRun: { seed: SEED, large: LARGE, ...counts } });

    const run = describeRun();
    const failures = settled.flatMap((result) => (result.status === 'rejected' ? [errorMessage(result.reason)] : []));
    expect(failures, run).toEqual([]);
    expect(counts.operations, run).toBe(OPERATIONS);
    expect(counts.transactionsRolledBack, run).toBeGreaterThan(0);
    expect(counts.savepointsRolledBack, run).toBeGreaterThan(0);
    expect(counts.savepointsReleased, run).toBeGreaterThan(0);

    const cache = await readSortedCache(database.db);
    expect(logLines.filter((line) => line.level === 'warn' || line.level === 'error'), run).toEqual([]);
    expect(final.failed, run).toBe(0);
    expect(await readOutboxStates(), run).toEqual({});
    expect(cache.length, run).toBeGreaterThan(0);
    expect(cache, run).toEqual(await expectedCacheLines(database.db, { objectTypes: OBJECT_TYPES }));
    expect(new Set(cache).size, run).toBe(cache.length);
    expect(await readOrphanedObjects(), run).toEqual([]);

    const rebuild = await outbox.rebuild({ objectTypes: OBJECT_TYPES });
    expect(rebuild.types.map((type) => type.failed), run).toEqual(OBJECT_TYPES.map(() => 0));
    expect(await readSortedCache(database.db), run).toEqual(cache);

    // The run is only as strong as its interleavings, so the concurrent
    // drainers must claim more rows than the final drain.
    expect(counts.drainerClaims, run).toBeGreaterThan(counts.finalClaims);
  },
  LARGE ? 600_000 : 120_000,
);
