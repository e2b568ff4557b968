import type { SearchIndex } from '@search-outbox/core';
import { sql, type Kysely } from 'kysely';

/**
 * The application schema of the write-path, contention and latency
 * scenarios: one `site` table shaped like NetBox's, with seven text fields
 * and two custom fields indexed, so every site has nine cache rows.
 */
export const SITE_OBJECT_TYPE = 'dcim.site';

export const SITE_INDEXES: readonly SearchIndex[] = [
  {
    objectType: SITE_OBJECT_TYPE,
    table: 'site',
    fields: [
      { name: 'name', weight: 100 },
      { name: 'facility', weight: 100 },
      { name: 'slug', weight: 110 },
      { name: 'description', weight: 500 },
      { name: 'physical_address', weight: 2000 },
      { name: 'shipping_address', weight: 2000 },
      { name: 'comments', weight: 5000 },
      { name: 'cf_code', weight: 1000, source: { json: { column: 'custom_field_data', key: 'code' } } },
      { name: 'cf_rank', weight: 1000, type: 'int', source: { json: { column: 'custom_field_data', key: 'rank' } } },
    ],
    display: ['status'],
  },
];

/** Cache rows per site produced by `SITE_INDEXES` for the rows that `insertSites` writes. */
export const CACHE_ROWS_PER_SITE = 9;

/** Creates the `site` table in the public schema. */
export async function createSiteTable(db: Kysely<any>): Promise<void> {
  await sql`
    CREATE TABLE site (
      id bigint PRIMARY KEY,
      name text NOT NULL,
      facility text,
      slug text,
      description text,
      physical_address text,
      shipping_address text,
      comments text,
      status text NOT NULL DEFAULT 'active',
      custom_field_data jsonb NOT NULL DEFAULT '{}'
    )
  `.execute(db);
}

/** Inserts sites with the given ids in one statement, every indexed field filled. */
export async function insertSites(db: Kysely<any>, ids: readonly number[]): Promise<void> {
  await sql`
    INSERT INTO site (id, name, facility, slug, description, physical_address, shipping_address, comments, custom_field_data)
    SELECT id, 'Site ' || id, 'Facility ' || id, 'site-' || id, 'Description of site ' || id,
           id || ' Main Street', id || ' Dock Road', 'Comments about site ' || id,
           jsonb_build_object('code', 'S' || id, 'rank', id)
    FROM unnest(${ids}::bigint[]) AS id
  `.execute(db);
}

/** Sets a site's description, the change every single-object transaction makes. */
export async function updateSiteDescription(db: Kysely<any>, id: number, description: string): Promise<void> {
  await sql`UPDATE site SET description = ${description} WHERE id = ${id}`.execute(db);
}

/**
 * Replaces the cache rows of the given sites in two statements (delete, then
 * insert from the live rows), the way a synchronous in-transaction rebuild
 * or a job queue's worker keeps the cache. It writes the same rows as the
 * search-outbox drain: empty and NULL values and numeric zeros give no row.
 */
export async function replaceSiteCacheRows(db: Kysely<any>, ids: readonly number[]): Promise<void> {
  const objectIds = ids.map(String);
  await sql`
    DELETE FROM search_cache WHERE object_type = ${SITE_OBJECT_TYPE} AND object_id = ANY(${objectIds}::text[])
  `.execute(db);
  await sql`
    INSERT INTO search_cache (object_type, object_id, field, type, value, weight)
    SELECT ${SITE_OBJECT_TYPE}, s.id::text, v.field, v.type, v.value, v.weight
    FROM site AS s
    CROSS JOIN LATERAL (VALUES
      ('name', 'str', s.name, 100),
      ('facility', 'str', s.facility, 100),
      ('slug', 'str', s.slug, 110),
      ('description', 'str', s.description, 500),
      ('physical_address', 'str', s.physical_address, 2000),
      ('shipping_address', 'str', s.shipping_address, 2000),
      ('comments', 'str', s.comments, 5000),
      ('cf_code', 'str', s.custom_field_data ->> 'code', 1000),
      ('cf_rank', 'int', s.custom_field_data ->> 'rank', 1000)
    ) AS v(field, type, value, weight)
    WHERE s.id = ANY(${ids}::bigint[])
      AND v.value IS NOT NULL AND v.value <> ''
      AND CASE WHEN v.type = 'int' THEN v.value::numeric <> 0 ELSE TRUE END
  `.execute(db);
}

/** Returns the ids from `first` to `first + count - 1`. */
export function idRange(first: number, count: number): number[] {
  return Array.from({ length: count }, (_, offset) => first + offset);
}
