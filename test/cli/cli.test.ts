import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemoModel, createApplicationTables, createExampleOutbox, loadDemoData } from '@search-outbox/example-netbox';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO_ROOT, 'packages/cli/dist/bin.js');
const CONFIG = join(REPO_ROOT, 'packages/example-netbox/search-outbox.config.mjs');

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the built CLI with only the environment variables given here (plus PATH), so the caller's DATABASE_URL never leaks in. */
function runCli(args: readonly string[], env: Record<string, string> = {}, cwd = REPO_ROOT): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '', ...env },
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

/** Returns a port on 127.0.0.1 with nothing listening: found free, then closed again. */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
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
});
