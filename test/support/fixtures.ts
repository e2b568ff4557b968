import { sql, type Kysely } from 'kysely';
import type { SearchIndex } from '@search-outbox/core';

/**
 * A small application schema for the core tests. Sites have seven indexed
 * fields, a region foreign key and custom fields. Devices store their
 * virtual chassis by name, and IP addresses and prefixes are indexed too.
 */
export const FIXTURE_INDEXES: readonly SearchIndex[] = [
  {
    objectType: 'dcim.site',
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
    display: ['status', { name: 'region', source: { related: { foreignKey: 'region_id', table: 'region' } } }],
  },
  {
    objectType: 'dcim.region',
    table: 'region',
    fields: [{ name: 'name', weight: 100 }],
  },
  {
    objectType: 'dcim.device',
    table: 'device',
    fields: [
      { name: 'name', weight: 100 },
      { name: 'serial', weight: 60 },
      {
        name: 'virtual_chassis',
        weight: 200,
        source: { related: { foreignKey: 'virtual_chassis_id', table: 'virtual_chassis' } },
      },
      { name: 'mtu', weight: 2000, type: 'int' },
    ],
    display: [{ name: 'site', source: { related: { foreignKey: 'site_id', table: 'site' } } }],
    where: { decommissioned: false },
  },
  {
    objectType: 'dcim.virtualchassis',
    table: 'virtual_chassis',
    fields: [{ name: 'name', weight: 100 }],
  },
  {
    objectType: 'ipam.ipaddress',
    table: 'ip_address',
    fields: [
      { name: 'address', weight: 100, type: 'inet' },
      { name: 'dns_name', weight: 300 },
    ],
  },
  {
    objectType: 'ipam.prefix',
    table: 'prefix',
    fields: [
      { name: 'prefix', weight: 110, type: 'cidr' },
      { name: 'description', weight: 500 },
    ],
  },
];

/** Creates the fixture tables in `schema` (which must exist). */
export async function createFixtureTables(db: Kysely<any>, schema = 'public'): Promise<void> {
  const s = sql.id(schema);
  await sql`
    CREATE TABLE ${s}.region (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE ${s}.site (
      id bigint PRIMARY KEY,
      name text NOT NULL,
      facility text,
      slug text,
      description text,
      physical_address text,
      shipping_address text,
      comments text,
      status text NOT NULL DEFAULT 'active',
      region_id bigint REFERENCES ${s}.region (id),
      custom_field_data jsonb NOT NULL DEFAULT '{}'
    );
    CREATE TABLE ${s}.virtual_chassis (id bigint PRIMARY KEY, name text NOT NULL);
    CREATE TABLE ${s}.device (
      id bigint PRIMARY KEY,
      name text,
      serial text,
      mtu integer,
      site_id bigint REFERENCES ${s}.site (id),
      virtual_chassis_id bigint REFERENCES ${s}.virtual_chassis (id),
      decommissioned boolean NOT NULL DEFAULT false
    );
    CREATE TABLE ${s}.ip_address (id bigint PRIMARY KEY, address inet NOT NULL, dns_name text);
    CREATE TABLE ${s}.prefix (id bigint PRIMARY KEY, prefix cidr NOT NULL, description text);
  `.execute(db);
}

export interface SiteRow {
  id: number;
  name: string;
  facility?: string | null;
  slug?: string | null;
  description?: string | null;
  physical_address?: string | null;
  shipping_address?: string | null;
  comments?: string | null;
  status?: string;
  region_id?: number | null;
  custom_field_data?: Record<string, unknown>;
}

/** Builds a site with all seven plain site fields filled. */
export function fullSite(id: number, name: string): SiteRow {
  return {
    id,
    name,
    facility: `Facility ${id}`,
    slug: name.toLowerCase().replace(/\s+/g, '-'),
    description: `Description of ${name}`,
    physical_address: `${id} Main Street`,
    shipping_address: `${id} Dock Road`,
    comments: `Comments about ${name}`,
  };
}

export async function insertSites(db: Kysely<any>, sites: readonly SiteRow[], schema = 'public'): Promise<void> {
  if (sites.length === 0) return;
  await db
    .withSchema(schema)
    .insertInto('site')
    .values(sites.map((site) => ({ ...site, custom_field_data: JSON.stringify(site.custom_field_data ?? {}) })))
    .execute();
}

/** Reads a schema's cache as sorted "type|id|field|type|value|weight" lines, for comparisons. */
export async function readCache(db: Kysely<any>, schema = 'public'): Promise<string[]> {
  const result = await sql<{ line: string }>`
    SELECT concat_ws('|', object_type, object_id, field, type, value, weight) AS line
    FROM ${sql.id(schema, 'search_cache')}
    ORDER BY 1
  `.execute(db);
  return result.rows.map((row) => row.line);
}

/** Counts outbox rows, optionally in one state. */
export async function countOutbox(db: Kysely<any>, state?: 'pending' | 'dead'): Promise<number> {
  const result = await sql<{ count: string }>`
    SELECT count(*) AS count FROM search_outbox.outbox WHERE ${state === undefined ? sql`TRUE` : sql`state = ${state}`}
  `.execute(db);
  return Number(result.rows[0]?.count ?? 0);
}
