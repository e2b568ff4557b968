import {
  countCacheRows,
  createBenchContext,
  createBenchData,
  ID_STRIDE,
  markSelection,
  pickObjects,
  SCENARIOS,
  scaleTo,
  selectLimitRows,
  type BenchContext,
} from '@search-outbox/bench';
import { resolveDataDirectory } from '@search-outbox/example-netbox';
import { startLocalPostgres, type LocalPostgres } from '@search-outbox/local-postgres';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';

let server: LocalPostgres;
let context: BenchContext;

beforeAll(async () => {
  server = await startLocalPostgres({ databaseUrl: inject('postgresUrl') });
  context = createBenchContext(server, { size: 'smoke', runs: 1, dataDirectory: resolveDataDirectory(), log: () => {} });
});

afterAll(async () => {
  await server.stop();
});

describe('bench limit', () => {
  it('matches the rows a drain writes', async () => {
    const data = await createBenchData(context, 'limit_check');
    try {
      const counts = await scaleTo(data, { objects: 5_000 });
      expect(counts.copies).toBeGreaterThan(0);
      const db = data.database.db;
      await markSelection(data.outbox, await pickObjects(db, data.registry, counts.objects));
      const summary = await data.outbox.drain();
      expect(summary.objects).toBe(counts.objects);
      expect(summary.failed).toBe(0);

      const cacheRows = await countCacheRows(db);
      expect(cacheRows).toBe(counts.cacheRows);
      const limit = selectLimitRows(data.registry, 'public');
      const onlyInCache = await sql<{ rows: string }>`
        SELECT count(*) AS rows FROM (
          SELECT object_type, object_id, field, type, value, weight FROM search_cache
          EXCEPT ALL (${limit})
        ) AS difference`.execute(db);
      const onlyInLimit = await sql<{ rows: string }>`
        SELECT count(*) AS rows FROM (
          (${limit})
          EXCEPT ALL SELECT object_type, object_id, field, type, value, weight FROM search_cache
        ) AS difference`.execute(db);
      expect(Number(onlyInCache.rows[0]?.rows)).toBe(0);
      expect(Number(onlyInLimit.rows[0]?.rows)).toBe(0);
    } finally {
      await data.database.destroy();
    }
  });

  it('clones sites with their devices', async () => {
    const data = await createBenchData(context, 'scale_check');
    try {
      const counts = await scaleTo(data, { cacheRows: 10_000 });
      const db = data.database.db;
      const orphans = await sql<{ rows: string }>`
        SELECT count(*) AS rows FROM dcim_device AS d
        WHERE d.site_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM dcim_site AS s WHERE s.id = d.site_id)`.execute(db);
      const duplicates = await sql<{ rows: string }>`
        SELECT count(*) - count(DISTINCT address) AS rows FROM ipam_ipaddress`.execute(db);
      expect(counts.cacheRows).toBeGreaterThanOrEqual(10_000);
      const sites = await sql<{ base: string; total: string }>`
        SELECT count(*) FILTER (WHERE id < ${ID_STRIDE}) AS base, count(*) AS total FROM dcim_site`.execute(db);
      expect(Number(sites.rows[0]?.total)).toBe(Number(sites.rows[0]?.base) * (counts.copies + 1));
      expect(Number(orphans.rows[0]?.rows)).toBe(0);
      expect(Number(duplicates.rows[0]?.rows)).toBe(0);
    } finally {
      await data.database.destroy();
    }
  });
});

describe('bench scenarios at smoke size', () => {
  it.each(SCENARIOS.map((scenario) => [scenario.id, scenario] as const))('%s runs', async (_id, scenario) => {
    const result = await scenario.run(context);
    expect(result.id).toBe(scenario.id);
    expect(result.figures.length).toBeGreaterThan(0);
    for (const figure of result.figures) {
      expect(Number.isFinite(figure.summary.median), figure.label).toBe(true);
      expect(figure.summary.runs, figure.label).toBeGreaterThan(0);
    }
    expect(result.targets.length).toBeGreaterThan(0);
    for (const check of result.targets) {
      expect(typeof check.met, check.target).toBe('boolean');
      if (!check.met) expect(check.reason, check.target).toBeTruthy();
    }
  });
});
