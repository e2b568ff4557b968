import {
  createSearchOutbox,
  defineIndexes,
  DEFAULT_OUTBOX_SCHEMA,
  OUTBOX_TABLE,
  type IndexRegistry,
  type SearchOutbox,
} from '@search-outbox/core';
import { buildDemoModel, createApplicationTables, readCsv, type DemoModel } from '@search-outbox/example-netbox';
import { sql, type Kysely } from 'kysely';
import type { BenchContext, BenchDatabase } from './context.js';
import { countLimitRows, insertAtLimit, type ObjectSelection } from './limit.js';

/**
 * Scaling of the NetBox demo data. One copy clones every site with its
 * locations, racks, VLANs, devices and their interfaces, and every IP
 * address, under new ids (old id + copy × ID_STRIDE). Sites and devices get
 * new names (`<name>-c<copy>`). Racks, locations, VLANs and interfaces keep
 * theirs, because NetBox requires them to be unique only within their site
 * or device. All copies of a table are written by one
 * `INSERT … SELECT` over `generate_series`, so scaling to a million cache
 * rows takes seconds. Prefixes, VRFs, tenants, virtual machines and the
 * other lookup tables are not cloned.
 */

/** Id offset between copies; above every id of the cloned tables in the demo data. */
export const ID_STRIDE = 1_000_000;
/** IP addresses per copy in the 10.0.0.0/8 range that cloned addresses are moved to. */
const ADDRESSES_PER_COPY = 4096;
/** Copies that fit: the cloned addresses must stay inside 10.0.0.0/8. */
const MAX_COPIES = 2 ** 24 / ADDRESSES_PER_COPY - 1;
const ROWS_PER_INSERT = 500;
/** Ids per mark call, under core's MAX_IDS_PER_MARK. */
const MARK_CHUNK = 50_000;

interface CloneRule {
  readonly table: string;
  /** Columns that point to rows of cloned tables and get the same id offset. */
  readonly offset: readonly string[];
  /** Columns that get the copy suffix. */
  readonly suffix?: readonly string[];
  /** Columns set to NULL in the copies, because the rows they point to are not cloned. */
  readonly cleared?: readonly string[];
}

const CLONE_RULES: readonly CloneRule[] = [
  { table: 'dcim_site', offset: [], suffix: ['name', 'slug'] },
  { table: 'dcim_location', offset: ['site_id', 'parent_id'] },
  { table: 'dcim_rack', offset: ['site_id', 'location_id'] },
  { table: 'ipam_vlan', offset: ['site_id'] },
  {
    table: 'dcim_device',
    offset: ['site_id', 'location_id', 'rack_id'],
    suffix: ['name'],
    cleared: ['virtual_chassis_id', 'primary_ip4_id', 'primary_ip6_id', 'oob_ip_id'],
  },
  {
    table: 'dcim_interface',
    offset: ['device_id', 'lag_id', 'parent_id', 'bridge_id', 'untagged_vlan_id'],
    cleared: ['cable_id', 'primary_mac_address_id'],
  },
  { table: 'ipam_ipaddress', offset: [], cleared: ['nat_inside_id'] },
];

/** A bench database with the demo tables, the outbox and the cache migrated. */
export interface BenchData {
  readonly database: BenchDatabase;
  readonly model: DemoModel;
  readonly registry: IndexRegistry;
  /** Outbox on the database's main pool, with no dispatcher: drains run only when a scenario calls them. */
  readonly outbox: SearchOutbox;
}

export interface ScaleTarget {
  /** Cache rows the data should produce at least. */
  readonly cacheRows?: number;
  /** Indexed objects the data should contain at least. */
  readonly objects?: number;
}

export interface ScaleCounts {
  /** Copies of the cloned tables added to the demo data. */
  readonly copies: number;
  /** Rows per indexed object type. */
  readonly objectsPerType: Readonly<Record<string, number>>;
  readonly objects: number;
  /** Cache rows that the declarations produce from the data. */
  readonly cacheRows: number;
}

/** Creates a database with the demo tables loaded from the CSV files and the outbox and cache migrated; no marks. */
export async function createBenchData(context: BenchContext, label: string): Promise<BenchData> {
  const database = await context.createDatabase(label);
  try {
    const model = buildDemoModel(context.dataDirectory);
    const registry = defineIndexes(model.indexes);
    const outbox = createSearchOutbox({ db: database.db, indexes: registry, dispatcher: 'none' });
    await outbox.migrate();
    await createApplicationTables(database.db, 'public', model.tables);
    for (const definition of model.tables) {
      if (definition.file === undefined) continue;
      const rows = readCsv(model.dataDirectory, definition.file);
      for (let start = 0; start < rows.length; start += ROWS_PER_INSERT) {
        await database.db.insertInto(definition.table).values(rows.slice(start, start + ROWS_PER_INSERT)).execute();
      }
    }
    return { database, model, registry, outbox };
  } catch (error) {
    await database.destroy();
    throw error;
  }
}

/**
 * Clones the demo data until it produces at least `target.cacheRows` cache
 * rows and contains at least `target.objects` indexed objects, then
 * analyzes the tables. Call it once, on freshly loaded data.
 */
export async function scaleTo(data: BenchData, target: ScaleTarget): Promise<ScaleCounts> {
  const db = data.database.db;
  const clonedTypes = new Set(
    CLONE_RULES.map((rule) => data.model.tables.find((table) => table.table === rule.table)?.objectType).filter(
      (type): type is string => type !== undefined,
    ),
  );
  const baseRows = await countLimitRows(db, data.registry);
  const baseObjects = await countObjects(db, data.registry);
  const copyRows = await countLimitRows(db, data.registry, 'public', await selectAll(db, data.registry, clonedTypes));
  const copyObjects = sumOf(
    Object.entries(baseObjects).filter(([type]) => clonedTypes.has(type)).map(([, count]) => count),
  );

  const copiesFor = (requested: number | undefined, base: number, perCopy: number): number =>
    requested === undefined || requested <= base ? 0 : Math.ceil((requested - base) / perCopy);
  let copies = Math.max(
    copiesFor(target.cacheRows, baseRows, copyRows),
    copiesFor(target.objects, sumOf(Object.values(baseObjects)), copyObjects),
  );
  assertCopiesFit(copies);
  if (copies > 0) await cloneCopies(data, 1, copies);
  let cacheRows = copies === 0 ? baseRows : await countLimitRows(db, data.registry);

  // A copy produces a few rows fewer than the original, because cleared
  // references (a device's virtual chassis, for example) index nothing.
  // Top up with copies at the measured rate.
  if (copies > 0 && target.cacheRows !== undefined && cacheRows < target.cacheRows) {
    const measuredCopyRows = (cacheRows - baseRows) / copies;
    const extra = Math.ceil((target.cacheRows - cacheRows) / measuredCopyRows);
    assertCopiesFit(copies + extra);
    await cloneCopies(data, copies + 1, copies + extra);
    copies += extra;
    cacheRows = await countLimitRows(db, data.registry);
  }
  await sql`ANALYZE`.execute(db);

  const objectsPerType = await countObjects(db, data.registry);
  return { copies, objectsPerType, objects: sumOf(Object.values(objectsPerType)), cacheRows };
}

function assertCopiesFit(copies: number): void {
  if (copies > MAX_COPIES) {
    throw new Error(`Scaling needs ${copies} copies of the demo data; at most ${MAX_COPIES} fit the 10.0.0.0/8 address range`);
  }
}

/** Creates, loads and scales a bench database and fills its cache with the limit's `INSERT … SELECT`. */
export async function prepareScaledData(
  context: BenchContext,
  label: string,
  target: ScaleTarget,
  options: { fillCache: boolean },
): Promise<{ data: BenchData; counts: ScaleCounts }> {
  const data = await createBenchData(context, label);
  try {
    const counts = await scaleTo(data, target);
    if (options.fillCache) {
      await insertAtLimit(data.database.db, data.registry);
      await sql`VACUUM ANALYZE search_cache`.execute(data.database.db);
    }
    context.log(`${label}: ${counts.objects} objects, ${counts.cacheRows} cache rows (${counts.copies} copies)`);
    return { data, counts };
  } catch (error) {
    await data.database.destroy();
    throw error;
  }
}

/** Adds copies number `first` to `last` of the original rows (ids below ID_STRIDE). */
async function cloneCopies(data: BenchData, first: number, last: number): Promise<void> {
  for (const rule of CLONE_RULES) {
    const definition = data.model.tables.find((table) => table.table === rule.table);
    if (definition === undefined) throw new Error(`The demo model has no table ${rule.table} to clone`);
    const expressions = definition.columns.map((column) => {
      const name = sql.id(column.name);
      if (column.name === 'id' || rule.offset.includes(column.name)) {
        return sql`${name} + k * ${sql.lit(ID_STRIDE)}::bigint`;
      }
      if (rule.suffix?.includes(column.name)) return sql`${name} || '-c' || k`;
      if (rule.cleared?.includes(column.name)) return sql`NULL`;
      if (rule.table === 'ipam_ipaddress' && column.name === 'address') {
        // The copy's addresses get their own block of 10.0.0.0/8, keeping the prefix length.
        return sql`set_masklen('10.0.0.0'::inet + (k * ${sql.lit(ADDRESSES_PER_COPY)}::bigint
          + (row_number() OVER (PARTITION BY k ORDER BY id)) - 1), masklen(address))`;
      }
      return name;
    });
    const columns = definition.columns.map((column) => sql.id(column.name));
    await sql`
      INSERT INTO ${sql.id(rule.table)} (${sql.join(columns)})
      SELECT ${sql.join(expressions)}
      FROM ${sql.id(rule.table)} CROSS JOIN generate_series(${first}::int, ${last}::int) AS k
      WHERE id < ${sql.lit(ID_STRIDE)}
    `.execute(data.database.db);
  }
}

/** Counts the rows of every indexed table, by object type. */
export async function countObjects(db: Kysely<any>, registry: IndexRegistry): Promise<Record<string, number>> {
  const parts = registry.all.map(
    (index) => sql`SELECT ${index.objectType}::text AS object_type, count(*) AS objects FROM ${sql.id(index.table)}`,
  );
  const result = await sql<{ object_type: string; objects: string }>`${sql.join(parts, sql` UNION ALL `)}`.execute(db);
  return Object.fromEntries(result.rows.map((row) => [row.object_type, Number(row.objects)]));
}

/** Selects every object of the given types. */
async function selectAll(db: Kysely<any>, registry: IndexRegistry, objectTypes: ReadonlySet<string>): Promise<ObjectSelection> {
  const selection = new Map<string, string[]>();
  for (const index of registry.all) {
    if (!objectTypes.has(index.objectType)) continue;
    const result = await sql<{ id: string }>`SELECT ${sql.id(index.primaryKey)}::text AS id FROM ${sql.id(index.table)}`.execute(db);
    selection.set(index.objectType, result.rows.map((row) => row.id));
  }
  return selection;
}

/**
 * Picks `count` indexed objects, mixed across types in a fixed pseudo-random
 * order (md5 of type and id), so that the same data gives the same backlog.
 */
export async function pickObjects(db: Kysely<any>, registry: IndexRegistry, count: number): Promise<ObjectSelection> {
  const parts = registry.all.map(
    (index) => sql`SELECT ${index.objectType}::text AS object_type, ${sql.id(index.primaryKey)}::text AS object_id
      FROM ${sql.id(index.table)}`,
  );
  const result = await sql<{ object_type: string; object_id: string }>`
    SELECT object_type, object_id FROM (${sql.join(parts, sql` UNION ALL `)}) AS objects
    ORDER BY md5(object_type || ':' || object_id) LIMIT ${count}
  `.execute(db);
  if (result.rows.length < count) {
    throw new Error(`The bench data has ${result.rows.length} indexed objects; ${count} were requested`);
  }
  const selection = new Map<string, string[]>();
  for (const row of result.rows) {
    const ids = selection.get(row.object_type) ?? [];
    ids.push(row.object_id);
    selection.set(row.object_type, ids);
  }
  return selection;
}

/** Marks the selected objects in the outbox, one bulk mark per type. */
export async function markSelection(outbox: SearchOutbox, selection: ObjectSelection): Promise<void> {
  for (const [objectType, ids] of selection) {
    for (let start = 0; start < ids.length; start += MARK_CHUNK) {
      await outbox.mark(outbox.db, objectType, ids.slice(start, start + MARK_CHUNK));
    }
  }
}

/** Empties the outbox table. */
export async function truncateOutbox(db: Kysely<any>): Promise<void> {
  await sql`TRUNCATE ${sql.id(DEFAULT_OUTBOX_SCHEMA, OUTBOX_TABLE)}`.execute(db);
}

export function selectionSize(selection: ObjectSelection): number {
  return sumOf([...selection.values()].map((ids) => ids.length));
}

function sumOf(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0);
}
