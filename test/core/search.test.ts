import { createSearchOutbox, UnknownObjectTypeError, ValidationError, type SearchOutbox } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES, insertSites } from '../support/fixtures.js';

let database: TestDatabase;
let outbox: SearchOutbox;

beforeAll(async () => {
  database = await createTestDatabase('search');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
  await outbox.transaction(async (trx) => {
    await sql`INSERT INTO region (id, name) VALUES (1, 'North')`.execute(trx);
    await insertSites(trx, [
      { id: 1, name: 'Amsterdam DC', slug: 'ams-dc', description: '100% uptime_zone', region_id: 1 },
      { id: 2, name: 'Berlin DC', slug: 'ber-dc', comments: 'Near Amsterdam airport' },
      { id: 3, name: 'Cairo', slug: 'cai', description: 'Backslash \\ path' },
      { id: 4, name: 'A_B site', slug: 'axb' },
    ]);
    await sql`
      INSERT INTO device (id, name, serial, site_id) VALUES (1, 'ams-rtr01', 'SN-AMS-1', 1), (2, 'ber-rtr01', 'SN-BER', 2);
      INSERT INTO ip_address (id, address, dns_name) VALUES
        (1, '10.1.2.3/24', 'rtr.ams.example'), (2, '10.1.2.30/24', NULL), (3, '2001:db8::1/64', 'v6.example');
      INSERT INTO prefix (id, prefix, description) VALUES
        (1, '10.0.0.0/8', 'Corporate'), (2, '10.1.2.0/24', 'Amsterdam LAN'), (3, '192.168.0.0/16', 'Lab');
    `.execute(trx);
    await outbox.mark(trx, 'dcim.region', 1);
    await outbox.mark(trx, 'dcim.site', [1, 2, 3, 4]);
    await outbox.mark(trx, 'dcim.device', [1, 2]);
    await outbox.mark(trx, 'ipam.ipaddress', [1, 2, 3]);
    await outbox.mark(trx, 'ipam.prefix', [1, 2, 3]);
  });
  await outbox.drain();
});

afterAll(async () => {
  await database.destroy();
});

function ids(results: readonly { objectType: string; objectId: string }[]): string[] {
  return results.map((result) => `${result.objectType}:${result.objectId}`);
}

describe('lookups', () => {
  test('partial is a case-insensitive substring match', async () => {
    expect(ids(await outbox.search({ query: 'AMSTERDAM' }))).toEqual(['dcim.site:1', 'ipam.prefix:2', 'dcim.site:2']);
  });

  test('exact matches the whole value in any case', async () => {
    expect(ids(await outbox.search({ query: 'berlin dc', lookup: 'exact' }))).toEqual(['dcim.site:2']);
    expect(await outbox.search({ query: 'berlin', lookup: 'exact' })).toEqual([]);
  });

  test('startswith and endswith anchor the match', async () => {
    expect(ids(await outbox.search({ query: 'ams', lookup: 'startswith' }))).toEqual([
      'dcim.device:1',
      'dcim.site:1',
      'ipam.prefix:2',
    ]);
    expect(ids(await outbox.search({ query: 'RTR01', lookup: 'endswith' }))).toEqual(['dcim.device:1', 'dcim.device:2']);
  });

  test('regex is case-insensitive', async () => {
    expect(ids(await outbox.search({ query: '^(ams|ber)-RTR\\d+$', lookup: 'regex' }))).toEqual([
      'dcim.device:1',
      'dcim.device:2',
    ]);
  });

  test('ranks by weight and keeps the best match per object', async () => {
    const [device] = await outbox.search({ query: 'ams', objectTypes: ['dcim.device'] });

    expect(device).toMatchObject({ objectId: '1', field: 'serial', value: 'SN-AMS-1', weight: 60 });
  });

  test('filters by object type and honours the limit', async () => {
    expect(ids(await outbox.search({ query: 'dc', objectTypes: ['dcim.site'] }))).toEqual([
      'dcim.site:1',
      'dcim.site:2',
    ]);
    expect(await outbox.search({ query: 'dc', limit: 1 })).toHaveLength(1);
  });

  test('returns display attributes from the live object', async () => {
    const [site] = await outbox.search({ query: 'Amsterdam DC', lookup: 'exact' });
    const [device] = await outbox.search({ query: 'ber-rtr01', lookup: 'exact' });

    expect(site?.display).toEqual({ status: 'active', region: 'North' });
    expect(device?.display).toEqual({ site: 'Berlin DC' });
  });
});

describe('LIKE wildcards', () => {
  test('percent is a literal character', async () => {
    expect(ids(await outbox.search({ query: '100%' }))).toEqual(['dcim.site:1']);
    expect(await outbox.search({ query: '%' })).toHaveLength(1);
  });

  test('underscore is a literal character', async () => {
    expect(ids(await outbox.search({ query: 'a_b' }))).toEqual(['dcim.site:4']);
    expect(ids(await outbox.search({ query: '_', lookup: 'startswith' }))).toEqual([]);
  });

  test('backslash is a literal character', async () => {
    expect(ids(await outbox.search({ query: 'h \\ p' }))).toEqual(['dcim.site:3']);
  });
});

describe('IP addresses', () => {
  test('match addresses with the same host and containing prefixes', async () => {
    expect(ids(await outbox.search({ query: '10.1.2.3' }))).toEqual([
      'ipam.ipaddress:1',
      'ipam.ipaddress:2',
      'ipam.prefix:1',
      'ipam.prefix:2',
    ]);
  });

  test('exact lookup matches the host only', async () => {
    expect(ids(await outbox.search({ query: '10.1.2.3', lookup: 'exact' }))).toEqual(['ipam.ipaddress:1']);
  });

  test('an IPv6 address matches its host', async () => {
    expect(ids(await outbox.search({ query: '2001:db8::1', lookup: 'exact' }))).toEqual(['ipam.ipaddress:3']);
  });

  test('an address with a prefix length uses its host', async () => {
    expect(ids(await outbox.search({ query: '192.168.4.4/32' }))).toEqual(['ipam.prefix:3']);
  });

  test('an IP-like string that is no address matches as text only', async () => {
    expect(await outbox.search({ query: '10.1.2.999' })).toEqual([]);
  });
});

describe('edge values', () => {
  test('finds an object with a value longer than a btree entry', async () => {
    await sql`
      INSERT INTO site (id, name, description) VALUES (50, 'Long Description Site', repeat('long text ', 300) || 'needle'),
        (51, 'Huge Comments Site', NULL);
      UPDATE site SET comments = repeat('x', 1000000) || 'haystack' WHERE id = 51;
    `.execute(database.db);
    await outbox.mark(database.db, 'dcim.site', [50, 51]);
    const summary = await outbox.drain();

    expect(summary.failed).toBe(0);
    expect(ids(await outbox.search({ query: 'needle' }))).toEqual(['dcim.site:50']);
    expect(ids(await outbox.search({ query: 'haystack', lookup: 'endswith' }))).toEqual(['dcim.site:51']);
    expect(ids(await outbox.search({ query: 'long text long', lookup: 'startswith' }))).toEqual(['dcim.site:50']);
    expect(await outbox.search({ query: 'long text', lookup: 'exact' })).toEqual([]);
  });

  test('startswith folds case like the other lookups', async () => {
    await insertSites(database.db, [{ id: 60, name: 'ΟΔΟΣ ΑΘΗΝΑΣ' }, { id: 61, name: 'İstanbul Office' }]);
    await outbox.mark(database.db, 'dcim.site', [60, 61]);
    await outbox.drain();

    for (const lookup of ['partial', 'startswith'] as const) {
      expect(ids(await outbox.search({ query: 'οδοσ', lookup }))).toEqual(['dcim.site:60']);
      expect(ids(await outbox.search({ query: 'ΟΔΟΣ', lookup }))).toEqual(['dcim.site:60']);
      expect(ids(await outbox.search({ query: 'İstanbul', lookup }))).toEqual(['dcim.site:61']);
    }
  });

  test('an IPv6 zone id is searched as text', async () => {
    expect(await outbox.search({ query: 'fe80::1%eth0' })).toEqual([]);
  });

  test('an address in another notation finds its host', async () => {
    expect(ids(await outbox.search({ query: '2001:0db8:0::1', lookup: 'exact' }))).toEqual(['ipam.ipaddress:3']);
  });
});

describe('search validation', () => {
  test.each([
    ['an empty query', { query: '' }, /Invalid query: "" must not be empty/],
    ['a blank query', { query: '   ' }, /must not be empty/],
    ['an oversized query', { query: 'x'.repeat(501) }, /must be at most 500 characters long/],
    ['a NUL byte', { query: 'a\u0000b' }, /must not contain NUL characters/],
    ['a lone surrogate', { query: 'a\ud800' }, /well-formed Unicode/],
    ['an unknown lookup', { query: 'a', lookup: 'fuzzy' }, /Invalid lookup: "fuzzy" must be one of partial/],
    ['a zero limit', { query: 'a', limit: 0 }, /Invalid limit: 0 must be an integer from 1 to 1000/],
    ['a non-string query', { query: 42 }, /Invalid query: 42 must be a string/],
  ])('rejects %s', async (_label, options, message) => {
    const attempt = outbox.search(options as never);

    await expect(attempt).rejects.toThrow(ValidationError);
    await expect(attempt).rejects.toThrow(message);
  });

  test('rejects an invalid regex and names the pattern', async () => {
    const attempt = outbox.search({ query: '(unclosed', lookup: 'regex' });

    await expect(attempt).rejects.toThrow(ValidationError);
    await expect(attempt).rejects.toThrow(/Invalid query: "\(unclosed" is not a valid regular expression/);
  });

  test('rejects an unknown object type filter', async () => {
    const attempt = outbox.search({ query: 'a', objectTypes: ['dcim.site', 'dcim.cable'] });

    await expect(attempt).rejects.toThrow(UnknownObjectTypeError);
    await expect(attempt).rejects.toThrow(/Invalid objectTypes\[1\]: "dcim.cable" is not a declared object type/);
  });

  test('stops a costly regex at the statement timeout', async () => {
    // PostgreSQL's regex engine resists classic catastrophic patterns, so the
    // cost here comes from the amount of text: 400 values of 100,000 characters.
    await sql`
      INSERT INTO search_cache (object_type, object_id, field, type, value, weight)
      SELECT 'dcim.site', 'long' || n, 'name', 'str', repeat('ab', 50000), 100 FROM generate_series(1, 400) AS n
    `.execute(database.db);
    const attempt = outbox.search({ query: '(a|b)*c(a|b)*d', lookup: 'regex', timeoutMs: 20 });

    await expect(attempt).rejects.toThrow(/statement timeout/);
    await sql`DELETE FROM search_cache WHERE object_id LIKE 'long%'`.execute(database.db);
  });
});
