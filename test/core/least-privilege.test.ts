import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, inject, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';

// Runs the library as a role that has only the GRANTs of the drainer role
// in docs/deployment.md, read from the guide itself so that the test checks
// the documented text.

/** SQLSTATE of insufficient privilege, also raised for "must be owner". */
const INSUFFICIENT_PRIVILEGE = '42501';
const GUIDE = new URL('../../docs/deployment.md', import.meta.url);
const GUIDE_SECTION = "### The drainer's database role";
const GUIDE_ROLE = 'search_outbox_drainer';
const GUIDE_SCHEMA = 'netbox_demo';

/**
 * True when the test server's role can create and drop roles. A server
 * named by DATABASE_URL may give its role only CREATEDB, and then this file
 * is skipped, because it must create a role of its own.
 */
async function canCreateRoles(serverUrl: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const result = await client.query<{ rolcreaterole: boolean; rolsuper: boolean }>(
      'SELECT rolcreaterole, rolsuper FROM pg_roles WHERE rolname = current_user',
    );
    const row = result.rows[0];
    return row !== undefined && (row.rolcreaterole || row.rolsuper);
  } finally {
    await client.end();
  }
}

/**
 * Returns the GRANT statements of the drainer role's SQL block in the
 * deployment guide, for `role` and with `schema` in place of the guide's
 * example schema. The CREATE ROLE statement is left out, because the test
 * creates the role with a password of its own.
 */
async function readDocumentedGrants(role: string, schema: string): Promise<string[]> {
  const guide = await readFile(GUIDE, 'utf8');
  const sectionStart = guide.indexOf(GUIDE_SECTION);
  if (sectionStart === -1) {
    throw new Error(
      `docs/deployment.md has no heading "${GUIDE_SECTION}"; update GUIDE_SECTION to the heading of the drainer grants`,
    );
  }
  const block = /```sql\n([\s\S]*?)```/.exec(guide.slice(sectionStart));
  if (block?.[1] === undefined) {
    throw new Error(
      `docs/deployment.md has no sql block after "${GUIDE_SECTION}"; the drainer grants must be in a sql code block`,
    );
  }

  const withoutComments = block[1]
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('--'))
    .join('\n');
  return withoutComments
    .split(';')
    .map((statement) => statement.replace(/\s+/g, ' ').trim())
    .filter((statement) => statement.startsWith('GRANT '))
    .map((statement) =>
      statement
        .replace(new RegExp(`\\b${GUIDE_ROLE}\\b`, 'g'), role)
        .replace(new RegExp(`\\b${GUIDE_SCHEMA}\\b`, 'g'), schema),
    );
}

async function dropRole(serverUrl: string, role: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`DROP ROLE IF EXISTS "${role}"`);
  } finally {
    await client.end();
  }
}

const serverUrl = inject('postgresUrl');
const rolesAllowed = await canCreateRoles(serverUrl);

describe.skipIf(!rolesAllowed)('drainer role with the documented grants', () => {
  // Both are hex strings, so they are safe to embed in SQL. The role name is
  // unique per run because roles are shared by every database of the server.
  const role = `drainer_${randomBytes(6).toString('hex')}`;
  const password = randomBytes(18).toString('hex');

  let database: TestDatabase;
  let drainerDb: Kysely<any> | undefined;
  let roleCreated = false;
  let grants: string[];
  /** The application's outbox, as the owner of every table. */
  let owner: SearchOutbox;
  /** The same outbox as the drainer role. */
  let drainer: SearchOutbox;

  beforeAll(async () => {
    database = await createTestDatabase('least_privilege');
    owner = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    await owner.migrate();
    await createFixtureTables(database.db);

    await sql`CREATE ROLE ${sql.id(role)} LOGIN PASSWORD ${sql.lit(password)}`.execute(database.db);
    roleCreated = true;
    grants = await readDocumentedGrants(role, 'public');
    for (const grant of grants) {
      await sql.raw(grant).execute(database.db);
    }

    const url = new URL(database.url);
    url.username = role;
    url.password = password;
    const pool = new pg.Pool({ connectionString: url.toString(), max: 4 });
    // DROP DATABASE WITH (FORCE) in afterAll may end connections that are still closing.
    pool.on('error', () => {});
    drainerDb = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    drainer = createSearchOutbox({
      db: drainerDb,
      indexes: FIXTURE_INDEXES,
      dispatcher: 'none',
      retry: { maxAttempts: 1, backoffBaseMs: 0, backoffMaxMs: 0 },
    });
  });

  afterAll(async () => {
    try {
      await drainerDb?.destroy();
      // Dropping the database revokes every privilege of the role, and the
      // role owns no object, so DROP ROLE succeeds after it.
      await database?.destroy();
    } finally {
      if (roleCreated) await dropRole(serverUrl, role);
    }
  });

  beforeEach(async () => {
    await sql`
      TRUNCATE search_outbox.outbox, search_outbox.rebuild_progress, search_cache,
        device, site, region, virtual_chassis, ip_address, prefix
    `.execute(database.db);
  });

  /** Inserts one object of every fixture type, as the owner. */
  async function seedObjects(): Promise<void> {
    await sql`INSERT INTO region (id, name) VALUES (1, 'Europe')`.execute(database.db);
    await insertSites(database.db, [{ ...fullSite(1, 'Alpha'), region_id: 1 }]);
    await sql`INSERT INTO virtual_chassis (id, name) VALUES (1, 'stack-1')`.execute(database.db);
    await sql`INSERT INTO device (id, name, site_id, virtual_chassis_id) VALUES (1, 'switch-1', 1, 1)`.execute(database.db);
    await sql`INSERT INTO ip_address (id, address, dns_name) VALUES (1, '10.0.0.1/24', 'switch-1.example.net')`.execute(
      database.db,
    );
    await sql`INSERT INTO prefix (id, prefix, description) VALUES (1, '10.0.0.0/24', 'Lab network')`.execute(database.db);
  }

  const SEEDED_CACHE = [
    'dcim.device|1|name|str|switch-1|100',
    'dcim.device|1|virtual_chassis|str|stack-1|200',
    'dcim.region|1|name|str|Europe|100',
    'dcim.site|1|comments|str|Comments about Alpha|5000',
    'dcim.site|1|description|str|Description of Alpha|500',
    'dcim.site|1|facility|str|Facility 1|100',
    'dcim.site|1|name|str|Alpha|100',
    'dcim.site|1|physical_address|str|1 Main Street|2000',
    'dcim.site|1|shipping_address|str|1 Dock Road|2000',
    'dcim.site|1|slug|str|alpha|110',
    'dcim.virtualchassis|1|name|str|stack-1|100',
    'ipam.ipaddress|1|address|inet|10.0.0.1/24|100',
    'ipam.ipaddress|1|dns_name|str|switch-1.example.net|300',
    'ipam.prefix|1|description|str|Lab network|500',
    'ipam.prefix|1|prefix|cidr|10.0.0.0/24|110',
  ];

  /** Marks the objects of seedObjects, as the application does after its writes. */
  async function markSeededObjects(): Promise<void> {
    for (const index of FIXTURE_INDEXES) {
      await owner.mark(database.db, index.objectType, 1);
    }
  }

  test('connects as a plain role', async () => {
    const result = await sql<{ user: string; superuser: boolean }>`
      SELECT current_user AS user, rolsuper AS superuser FROM pg_roles WHERE rolname = current_user
    `.execute(drainerDb!);

    expect(result.rows[0]?.user).toBe(role);
    expect(result.rows[0]?.superuser).toBe(false);
  });

  test('guide lists the expected grants', () => {
    expect(grants).toEqual([
      `GRANT USAGE ON SCHEMA search_outbox TO ${role}`,
      `GRANT SELECT ON search_outbox.migrations TO ${role}`,
      `GRANT SELECT, INSERT, UPDATE, DELETE ON search_outbox.outbox, search_outbox.rebuild_progress TO ${role}`,
      `GRANT USAGE ON SCHEMA public TO ${role}`,
      `GRANT SELECT, INSERT, DELETE ON public.search_cache TO ${role}`,
      `GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${role}`,
    ]);
  });

  test('verify succeeds', async () => {
    await expect(drainer.verify()).resolves.toBeUndefined();
  });

  test('drain fills the cache', async () => {
    await seedObjects();
    await markSeededObjects();
    const summary = await drainer.drain();

    expect(summary.claimed).toBe(6);
    expect(summary.rebuilt).toBe(6);
    expect(summary.failed).toBe(0);
    expect(await readCache(database.db)).toEqual(SEEDED_CACHE);
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('drain removes an object that no longer matches', async () => {
    await seedObjects();
    await markSeededObjects();
    await drainer.drain();
    await sql`UPDATE device SET decommissioned = true WHERE id = 1`.execute(database.db);
    await owner.mark(database.db, 'dcim.device', 1);
    const summary = await drainer.drain();

    expect(summary.removed).toBe(1);
    expect(await readCache(database.db)).not.toContain('dcim.device|1|name|str|switch-1|100');
  });

  test('status and retry handle a dead object', async () => {
    await insertSites(database.db, [{ id: 2, name: 'Bad Rank', custom_field_data: { rank: 'not a number' } }]);
    await owner.mark(database.db, 'dcim.site', 2);
    const failed = await drainer.drain();

    expect(failed.dead).toBe(1);
    const status = await drainer.status();
    expect(status.dead).toBe(1);
    expect(status.pending).toBe(0);
    expect(status.byType.map((type) => type.objectType)).toEqual(['dcim.site']);

    await sql`UPDATE site SET custom_field_data = '{"rank": 4}' WHERE id = 2`.execute(database.db);
    const retried = await drainer.retry({ objectType: 'dcim.site', objectIds: [2] });
    expect(retried.retried).toBe(1);
    expect((await drainer.status()).pending).toBe(1);

    const summary = await drainer.drain();
    expect(summary.rebuilt).toBe(1);
    expect(await readCache(database.db)).toEqual(['dcim.site|2|cf_rank|int|4|1000', 'dcim.site|2|name|str|Bad Rank|100']);
    expect(await countOutbox(database.db)).toBe(0);
  });

  test('rebuild fills one type', async () => {
    await seedObjects();
    const summary = await drainer.rebuild({ objectTypes: ['dcim.site'] });

    expect(summary.types.map((type) => [type.objectType, type.objects, type.failed])).toEqual([['dcim.site', 1, 0]]);
    expect(await readCache(database.db)).toEqual(SEEDED_CACHE.filter((line) => line.startsWith('dcim.site|')));
  });

  test('rebuild fills all types', async () => {
    await seedObjects();
    await sql`
      INSERT INTO search_cache (object_type, object_id, field, type, value, weight)
      VALUES ('legacy.widget', '1', 'name', 'str', 'widget', 100), ('dcim.site', '99', 'name', 'str', 'Gone', 100)
    `.execute(database.db);
    const summary = await drainer.rebuild();

    expect(summary.types).toHaveLength(FIXTURE_INDEXES.length);
    expect(summary.undeclaredRowsRemoved).toBe(1);
    expect(summary.types.find((type) => type.objectType === 'dcim.site')?.staleRowsRemoved).toBe(1);
    expect(await readCache(database.db)).toEqual(SEEDED_CACHE);
  });

  test('rebuild marks a failing object for the drain', async () => {
    await insertSites(database.db, [fullSite(1, 'Alpha'), { id: 2, name: 'Bad Rank', custom_field_data: { rank: 'x' } }]);
    const summary = await drainer.rebuild({ objectTypes: ['dcim.site'] });

    expect(summary.types[0]?.failed).toBe(1);
    expect(await countOutbox(database.db, 'pending')).toBe(1);
  });

  test('search returns display attributes', async () => {
    await seedObjects();
    await markSeededObjects();
    await drainer.drain();
    const results = await drainer.search({ query: 'alpha' });

    expect(results).toHaveLength(1);
    expect(results[0]?.objectType).toBe('dcim.site');
    expect(results[0]?.objectId).toBe('1');
    expect(results[0]?.display).toEqual({ status: 'active', region: 'Europe' });
    const address = await drainer.search({ query: '10.0.0.1' });
    expect(address.map((result) => result.objectType).sort()).toEqual(['ipam.ipaddress', 'ipam.prefix']);
  });

  test.each([
    ['UPDATE site', sql`UPDATE site SET name = 'Changed' WHERE id = 1`],
    ['INSERT INTO site', sql`INSERT INTO site (id, name) VALUES (3, 'Intruder')`],
    ['DELETE FROM site', sql`DELETE FROM site`],
    ['UPDATE search_cache', sql`UPDATE search_cache SET weight = 1`],
    ['TRUNCATE search_cache', sql`TRUNCATE search_cache`],
    ['ALTER TABLE search_cache', sql`ALTER TABLE search_cache ADD COLUMN extra text`],
    ['DROP TABLE search_cache', sql`DROP TABLE search_cache`],
    ['DROP TABLE search_outbox.outbox', sql`DROP TABLE search_outbox.outbox`],
  ])('rejects %s', async (_statement, query) => {
    await expect(query.execute(drainerDb!)).rejects.toMatchObject({ code: INSUFFICIENT_PRIVILEGE });
  });
});
