import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, type DrainSummary, type SearchOutbox } from '@search-outbox/core';
import {
  buildDemoModel,
  createApplicationTables,
  createExampleOutbox,
  loadDemoData,
  loadLegacySnapshot,
  type DemoModel,
  type LoadSummary,
} from '@search-outbox/example-netbox';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import {
  compareRows,
  computeExpectedRows,
  FIELDS_MISSING_FROM_DATA,
  readCacheRows,
  rowKey,
  type CacheRow,
} from './netbox-oracle.js';

const model: DemoModel = buildDemoModel();
const oracle = computeExpectedRows(model.dataDirectory);

describe('NetBox demo oracle', () => {
  it('names the declared fields the data lacks', () => {
    expect(oracle.missingFields).toEqual(FIELDS_MISSING_FROM_DATA);
  });

  it('has one row per object and field', () => {
    const keys = new Set(oracle.rows.map((row) => `${row.object_type}|${row.object_id}|${row.field}`));
    expect(keys.size).toBe(oracle.rows.length);
  });

  it('includes foreign-key names and custom fields', () => {
    const chassis = oracle.rows.filter((row) => row.object_type === 'dcim.device' && row.field === 'virtual_chassis');
    const customFields = oracle.rows.filter((row) => row.field === 'cf_cust_id');
    expect(chassis.length).toBeGreaterThan(0);
    expect(customFields.length).toBeGreaterThan(0);
  });
});

describe('loading the NetBox demo data through the outbox', () => {
  let database: TestDatabase;
  let outbox: SearchOutbox;
  let load: LoadSummary;
  let rolledBackOutboxRows: number;
  let drain: DrainSummary;
  let cache: CacheRow[];

  beforeAll(async () => {
    database = await createTestDatabase('demo_load');
    await migrate(database.db, { cacheSchemas: ['public'] });
    await createApplicationTables(database.db, 'public', model.tables);
    outbox = createExampleOutbox(database.db, { model, dispatcher: 'none' });

    load = await loadDemoData(database.db, outbox, model);
    const outboxRows = await database.db
      .withSchema('search_outbox')
      .selectFrom('outbox')
      .select('id')
      .where('object_type', '=', load.rolledBack.objectType)
      .where('object_id', '=', load.rolledBack.id)
      .execute();
    rolledBackOutboxRows = outboxRows.length;
    drain = await outbox.drain();
    cache = await readCacheRows(database.db, 'public');
  });

  afterAll(async () => {
    await database?.destroy();
  });

  it('declares only existing tables and columns', async () => {
    await expect(outbox.verify({ schema: 'public' })).resolves.toBeUndefined();
  });

  it('fills the cache with exactly the oracle rows', () => {
    const difference = compareRows(cache, oracle.rows);
    expect(difference.unexpected).toEqual([]);
    expect(difference.missing).toEqual([]);
    expect(cache.length).toBe(oracle.rows.length);
  });

  it('stores inet values in their PostgreSQL text form', () => {
    const address = cache.find((row) => row.object_type === 'ipam.ipaddress' && row.object_id === '1');
    expect(address?.value).toBe('192.168.0.1/22');
    expect(address?.type).toBe('inet');
  });

  it('drains every pending mark', () => {
    expect(drain.claimed).toBe(load.outboxRows);
    expect(drain.failed).toBe(0);
    expect(drain.dead).toBe(0);
    expect(drain.remaining).toBe(0);
  });

  it('coalesces repeated edits across transactions', () => {
    expect(load.edited.transactions).toBeGreaterThan(1);
    expect(drain.objects).toBeLessThan(drain.claimed);
  });

  it('coalesces a delete and re-create in one transaction', () => {
    // markDeleted and mark of the recreated device share one outbox row.
    expect(load.outboxRows).toBe(load.markedIds - 1);
  });

  it('leaves nothing from the rolled-back savepoint', async () => {
    const tenant = await database.db
      .selectFrom('tenancy_tenant')
      .select('id')
      .where('id', '=', load.rolledBack.id)
      .execute();
    expect(rolledBackOutboxRows).toBe(0);
    expect(tenant).toEqual([]);
    expect(cache.filter((row) => row.object_id === load.rolledBack.id)).toEqual([]);
  });

  it('keeps the recreated device searchable', async () => {
    const results = await outbox.search({ query: load.recreated.name, lookup: 'exact', objectTypes: ['dcim.device'] });
    expect(results.map((result) => result.objectId)).toEqual([load.recreated.id]);
  });

  it('restores the edited site to its CSV description', () => {
    const descriptions = cache.filter(
      (row) => row.object_type === 'dcim.site' && row.object_id === load.edited.id && row.field === 'description',
    );
    const expected = oracle.rows.filter(
      (row) => row.object_type === 'dcim.site' && row.object_id === load.edited.id && row.field === 'description',
    );
    expect(descriptions.map(rowKey)).toEqual(expected.map(rowKey));
  });

  it('finds an address and the prefixes containing it', async () => {
    const results = await outbox.search({ query: '192.168.0.5' });
    const found = results.map((result) => `${result.objectType}:${result.value}`);
    expect(found).toEqual(['ipam.ipaddress:192.168.0.5/22', 'ipam.prefix:192.168.0.0/22', 'ipam.prefix:192.168.0.0/20']);
  });

  it('displays related names next to a result', async () => {
    const [site] = await outbox.search({ query: 'DM-Akron', lookup: 'exact', objectTypes: ['dcim.site'] });
    expect(site?.display.region).toBe('Ohio');
    expect(site?.display.tenant).toBe('Dunder-Mifflin, Inc.');
  });
});

describe('rebuilding over the legacy cache snapshot', () => {
  let database: TestDatabase;
  let outbox: SearchOutbox;

  beforeAll(async () => {
    database = await createTestDatabase('demo_legacy');
    await migrate(database.db, { cacheSchemas: ['public'] });
    await createApplicationTables(database.db, 'public', model.tables);
    outbox = createExampleOutbox(database.db, { model, dispatcher: 'none' });
    await loadDemoData(database.db, outbox, model);
  });

  afterAll(async () => {
    await database?.destroy();
  });

  it('replaces every stale row with the oracle rows', async () => {
    const inserted = await loadLegacySnapshot(database.db, { schema: 'public', dataDirectory: model.dataDirectory });
    const stale = await readCacheRows(database.db, 'public');
    expect(inserted).toBe(11033);
    expect(stale.some((row) => row.value === 'None')).toBe(true);
    expect(compareRows(stale, oracle.rows).unexpected.length).toBeGreaterThan(0);

    const summary = await outbox.rebuild({ schema: 'public' });
    const rebuilt = await readCacheRows(database.db, 'public');
    const difference = compareRows(rebuilt, oracle.rows);
    expect(difference.unexpected).toEqual([]);
    expect(difference.missing).toEqual([]);
    expect(summary.types.map((type) => type.objectType).sort()).toEqual(model.indexes.map((index) => index.objectType).sort());
  });
});
