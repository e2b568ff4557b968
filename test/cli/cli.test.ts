import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSearchOutbox, migrate } from '@search-outbox/core';
import { buildDemoModel, createApplicationTables, createExampleOutbox, loadDemoData } from '@search-outbox/example-netbox';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { closedPort } from '../support/network.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO_ROOT, 'packages/cli/dist/bin.js');
const CONFIG = join(REPO_ROOT, 'packages/example-netbox/search-outbox.config.mjs');

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Environment variables of the caller that reach the CLI. DATABASE_URL and
 * SEARCH_OUTBOX_CONFIG stay out, because the tests choose the database and
 * the configuration themselves (and test the CLI without either).
 */
const PASSED_THROUGH = ['PATH', 'SEARCH_OUTBOX_DEMO_DATA'] as const;

function callerEnvironment(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of PASSED_THROUGH) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return env;
}

/** Runs the built CLI to its exit, with the caller's PASSED_THROUGH variables plus `env`. */
function runCli(args: readonly string[], env: Record<string, string> = {}, cwd = REPO_ROOT): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { ...callerEnvironment(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('search-outbox CLI without a database', () => {
  it('prints help with every command', async () => {
    const run = await runCli(['--help']);
    expect(run.code).toBe(0);
    for (const command of ['migrate', 'drain', 'rebuild', 'status', 'search', 'retry', 'demo']) {
      expect(run.stdout).toContain(command);
    }
  });

  it('prints help of each command', async () => {
    for (const command of ['migrate', 'drain', 'rebuild', 'status', 'search', 'retry', 'demo']) {
      const run = await runCli([command, '--help']);
      expect(run.code, command).toBe(0);
      expect(run.stdout, command).toContain(`Usage: search-outbox ${command}`);
    }
  });

  it('exits 2 on an unknown command', async () => {
    const run = await runCli(['reindex']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("unknown command 'reindex'");
  });

  it('exits 2 on an unknown option', async () => {
    const run = await runCli(['status', '--verbose']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("unknown option '--verbose'");
  });

  it('names the missing configuration file', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'search-outbox-cli-'));
    try {
      const run = await runCli(['search', 'akron'], {}, directory);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain(join(directory, 'search-outbox.config.js'));
      expect(run.stderr).toContain('--config');
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it('names a --config file that does not exist', async () => {
    const run = await runCli(['search', 'akron', '--config', 'missing.config.mjs']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`Configuration file not found: ${join(REPO_ROOT, 'missing.config.mjs')} (from --config)`);
  });

  it('rejects a configuration without indexes', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'search-outbox-cli-'));
    try {
      writeFileSync(join(directory, 'search-outbox.config.mjs'), 'export const outboxSchema = "search_outbox";\n');
      const run = await runCli(['search', 'akron'], {}, directory);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain('it must export "indexes"');
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it('asks for a database when none is given', async () => {
    const run = await runCli(['status']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('pass --database-url <url> or set DATABASE_URL');
  });

  it('exits 1 when the database is unreachable', async () => {
    const port = await closedPort();
    const run = await runCli(['status'], { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('error:');
  });
  it('lists the environment variables in help', async () => {
    const run = await runCli(['--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('DATABASE_URL');
    expect(run.stdout).toContain('SEARCH_OUTBOX_CONFIG');
    expect(run.stdout).toContain('SEARCH_OUTBOX_DEMO_DATA');
    expect(run.stdout).toContain('<repo>/../shared/data/netbox-demo');
  });

  it('rejects an unparseable --database-url with exit code 2', async () => {
    const run = await runCli(['status', '--database-url', 'postgres://reader:s3cret-pass@127.0.0.1:notaport/db']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --database-url: "postgres://reader:****@127.0.0.1:notaport/db"');
    expect(run.stderr).not.toContain('s3cret-pass');
  });

  it('rejects a non-PostgreSQL DATABASE_URL with exit code 2', async () => {
    const run = await runCli(['status'], { DATABASE_URL: 'mysql://reader:s3cret-pass@127.0.0.1/db' });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid DATABASE_URL: "mysql://reader:****@127.0.0.1/db"');
    expect(run.stderr).not.toContain('s3cret-pass');
  });

  it('masks a password query parameter', async () => {
    const run = await runCli(['status', '--database-url', 'postgres://127.0.0.1:99999/db?password=s3cret-pass']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --database-url: "postgres://127.0.0.1:99999/db?password=****"');
    expect(run.stderr).not.toContain('s3cret-pass');
  });

  it('names --cache-schema in its error', async () => {
    const run = await runCli(['migrate', '--cache-schema', 'public', '--cache-schema', 'Bad-Schema']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --cache-schema: "Bad-Schema" is not a valid schema name');
  });

  it('names the configuration file of an invalid schema', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'search-outbox-cli-'));
    try {
      const cases = [
        { name: 'schema', source: 'export const schema = "Bad-Schema";', shown: '"Bad-Schema"' },
        { name: 'outboxSchema', source: 'export const outboxSchema = "outbox; drop";', shown: '"outbox; drop"' },
        { name: 'cacheSchemas[1]', source: 'export const cacheSchemas = ["public", "9lives"];', shown: '"9lives"' },
      ];
      for (const { name, source, shown } of cases) {
        const file = join(directory, `${name.replace(/\W/g, '_')}.config.mjs`);
        writeFileSync(file, `export const indexes = [];\n${source}\n`);
        const run = await runCli(['migrate', '--config', file]);
        expect(run.code, name).toBe(2);
        expect(run.stderr, name).toContain(`Invalid "${name}" in configuration ${file}: ${shown} is not a valid schema name`);
      }
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it('reads SEARCH_OUTBOX_DEMO_DATA of the caller', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'search-outbox-cli-'));
    const previous = process.env.SEARCH_OUTBOX_DEMO_DATA;
    process.env.SEARCH_OUTBOX_DEMO_DATA = directory;
    try {
      const run = await runCli(['demo']);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain(`NetBox demo data not found: ${directory} has no search-indexes.json`);
    } finally {
      if (previous === undefined) delete process.env.SEARCH_OUTBOX_DEMO_DATA;
      else process.env.SEARCH_OUTBOX_DEMO_DATA = previous;
      rmSync(directory, { recursive: true, force: true });
    }
  });
});

describe('search-outbox CLI on the NetBox data', () => {
  let database: TestDatabase;
  let env: Record<string, string>;

  beforeAll(async () => {
    database = await createTestDatabase('cli');
    env = { DATABASE_URL: database.url };
  });

  afterAll(async () => {
    await database?.destroy();
  });

  it('never prints a rejected password', async () => {
    const url = new URL(database.url);
    url.password = 'Pa55-never-printed-5e1d';
    const run = await runCli(['status', '--log-level', 'debug'], { DATABASE_URL: url.toString() });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/authentication/i);
    expect(run.stdout + run.stderr).not.toContain('Pa55-never-printed-5e1d');
  });

  it('asks for migrate before status', async () => {
    const run = await runCli(['status'], env);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('run `search-outbox migrate`');
  });

  it('migrates, then finds nothing left to do', async () => {
    const first = await runCli(['migrate', '--config', CONFIG, '--cache-schema', 'public', '--json'], env);
    expect(first.code).toBe(0);
    const applied = JSON.parse(first.stdout) as { applied: { schema: string }[] };
    expect(applied.applied.map((migration) => migration.schema)).toContain('public');

    const second = await runCli(['migrate', '--config', CONFIG, '--cache-schema', 'public'], env);
    expect(second.code).toBe(0);
    expect(second.stdout).toContain('Up to date');
  });

  it('reports pending marks in status --json', async () => {
    const model = buildDemoModel();
    await createApplicationTables(database.db, 'public', model.tables);
    const outbox = createExampleOutbox(database.db, { model, dispatcher: 'none' });
    const load = await loadDemoData(database.db, outbox, model);

    const run = await runCli(['status', '--json'], env);
    expect(run.code).toBe(0);
    const status = JSON.parse(run.stdout) as { pending: number; dead: number; byType: { objectType: string; pending: number }[] };
    expect(status.pending).toBe(load.outboxRows);
    expect(status.dead).toBe(0);
    expect(status.byType.find((type) => type.objectType === 'dcim.site')?.pending).toBe(24 + load.edited.transactions);
  });

  it('prints the status as text', async () => {
    const run = await runCli(['status'], env);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^pending: \d+$/m);
    expect(run.stdout).toContain('oldest pending age:');
    expect(run.stdout).toContain('dcim.interface');
  });

  it('drains the outbox', async () => {
    const run = await runCli(['drain', '--config', CONFIG, '--json', '--batch-size', '1000'], env);
    expect(run.code).toBe(0);
    const summary = JSON.parse(run.stdout) as { claimed: number; objects: number; remaining: number; failed: number };
    expect(summary.remaining).toBe(0);
    expect(summary.failed).toBe(0);
    expect(summary.objects).toBeLessThan(summary.claimed);
  });

  it('returns search results as JSON', async () => {
    const run = await runCli(['search', 'akron', '--config', CONFIG, '--schema', 'public', '--json', '--type', 'dcim.site'], env);
    expect(run.code).toBe(0);
    const results = JSON.parse(run.stdout) as { objectType: string; value: string; display: Record<string, string | null> }[];
    expect(results.map((result) => result.value)).toEqual(['DM-Akron']);
    expect(results[0]?.display.region).toBe('Ohio');
  });

  it('prints search results as text', async () => {
    const run = await runCli(['search', '192.168.0.5', '--config', CONFIG, '--schema', 'public'], env);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('ipam.ipaddress #5  address: "192.168.0.5/22"');
    expect(run.stdout).toContain('ipam.prefix #95  prefix: "192.168.0.0/20"');
  });

  it('rejects --limit abc with exit code 2', async () => {
    const run = await runCli(['search', 'akron', '--config', CONFIG, '--limit', 'abc'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --limit: "abc" must be an integer from 1 to 1000');
  });

  it('rejects an unknown --type with exit code 2', async () => {
    const run = await runCli(['search', 'akron', '--config', CONFIG, '--type', 'dcim.spaceship'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --type: "dcim.spaceship" is not a declared object type');
  });

  it('rejects an invalid regex with exit code 2', async () => {
    const run = await runCli(['search', 'a(b', '--config', CONFIG, '--schema', 'public', '--lookup', 'regex'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('a(b');
  });

  it('rejects an unknown --lookup with exit code 2', async () => {
    const run = await runCli(['search', 'akron', '--config', CONFIG, '--lookup', 'fuzzy'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --lookup: "fuzzy" must be one of partial, exact, startswith, endswith, regex');
  });

  it('rebuilds one type', async () => {
    const run = await runCli(['rebuild', '--config', CONFIG, '--schema', 'public', '--type', 'dcim.site', '--json'], env);
    expect(run.code).toBe(0);
    const summary = JSON.parse(run.stdout) as { types: { objectType: string; objects: number }[] };
    expect(summary.types).toEqual([expect.objectContaining({ objectType: 'dcim.site', objects: 24 })]);
  });

  it('retries dead rows of one type', async () => {
    const run = await runCli(['retry', '--config', CONFIG, '--type', 'dcim.site', '--json'], env);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ retried: 0 });
  });

  it('rejects retry --id without --type', async () => {
    const run = await runCli(['retry', '--config', CONFIG, '--id', '7'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --id: "7" needs --type');
  });

  it('names --id for an invalid id', async () => {
    const run = await runCli(['retry', '--config', CONFIG, '--type', 'dcim.site', '--id', 'abc'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --id: "abc" must be a');
  });

  it('names --id for an invalid id of several', async () => {
    const run = await runCli(['retry', '--config', CONFIG, '--type', 'dcim.site', '--id', '7', '--id', 'abc'], env);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid --id: "abc" must be a');
  });
});

describe('search-outbox CLI when its backend is terminated', () => {
  const WIDGETS = 30_000;
  let database: TestDatabase;
  let directory: string;
  let config: string;

  beforeAll(async () => {
    database = await createTestDatabase('cli_terminate');
    directory = mkdtempSync(join(tmpdir(), 'search-outbox-cli-'));
    config = join(directory, 'search-outbox.config.mjs');
    const indexes = [{ objectType: 'test.widget', table: 'widget', fields: [{ name: 'name', weight: 100 }] }];
    writeFileSync(config, `export const indexes = ${JSON.stringify(indexes)};\n`);

    await migrate(database.db);
    await sql`CREATE TABLE widget (id bigint PRIMARY KEY, name text NOT NULL)`.execute(database.db);
    await sql`INSERT INTO widget SELECT i, 'widget ' || i FROM generate_series(1, ${WIDGETS}) AS i`.execute(database.db);
    const outbox = createSearchOutbox({ db: database.db, indexes, dispatcher: 'none' });
    const ids = Array.from({ length: WIDGETS }, (_, position) => position + 1);
    await outbox.mark(database.db, 'test.widget', ids);
  });

  afterAll(async () => {
    await database?.destroy();
    if (directory !== undefined) rmSync(directory, { recursive: true, force: true });
  });

  it('exits 1 with an error line and keeps the rows', async () => {
    const applicationName = `search_outbox_cli_${randomBytes(4).toString('hex')}`;
    const url = new URL(database.url);
    url.searchParams.set('application_name', applicationName);

    let exited = false;
    const running = runCli(['drain', '--config', config, '--batch-size', '10000'], { DATABASE_URL: url.toString() }).finally(
      () => (exited = true),
    );

    // A backend with a transaction id is inside a drain batch, so its client
    // is checked out. Finding it and terminating it are separate statements:
    // PostgreSQL may evaluate a pg_terminate_backend(pid) in the WHERE clause
    // before the other conditions, and terminate backends of other tests.
    let terminated = 0;
    while (!exited && terminated === 0) {
      const found = await sql<{ pid: number }>`
        SELECT pid FROM pg_stat_activity WHERE application_name = ${applicationName} AND backend_xid IS NOT NULL
      `.execute(database.db);
      for (const { pid } of found.rows) {
        await sql`SELECT pg_terminate_backend(${pid}::int)`.execute(database.db);
        terminated += 1;
      }
      if (terminated === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const run = await running;

    expect(terminated, 'the drain finished before its backend was terminated').toBeGreaterThan(0);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^error: /m);
    expect(run.stderr).not.toContain("Unhandled 'error' event");
    expect(run.stderr).not.toMatch(/^\s+at /m);

    const pending = await sql<{ count: string }>`
      SELECT count(*) FROM search_outbox.outbox WHERE state = 'pending'
    `.execute(database.db);
    const cached = await sql<{ count: string }>`
      SELECT count(DISTINCT object_id) FROM public.search_cache WHERE object_type = 'test.widget'
    `.execute(database.db);
    const pendingCount = Number(pending.rows[0]?.count);
    const cachedCount = Number(cached.rows[0]?.count);
    expect(pendingCount).toBeGreaterThan(0);
    expect(pendingCount + cachedCount).toBe(WIDGETS);
  });
});
