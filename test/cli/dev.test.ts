import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO_ROOT, 'packages/cli/dist/bin.js');

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the built CLI to its exit with PATH, SEARCH_OUTBOX_DEMO_DATA (when set) and nothing else of the caller's environment. */
function runCli(args: readonly string[]): Promise<CliRun> {
  const env: Record<string, string> = {};
  for (const name of ['PATH', 'SEARCH_OUTBOX_DEMO_DATA']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface DevSummaryJson {
  transactions: number;
  messagesSent: number;
  dispatchFailures: number;
  messagesReceived: number;
  messagesDeleted: number;
  sqsInvocations: number;
  rebuilt: number;
  failed: number;
  dead: number;
  pending: number;
  deadLetterMessages: number;
  sqsEndpoint: string;
  searches: { title: string; results: { objectType: string; value: string }[] }[];
}

describe('search-outbox dev', () => {
  let database: TestDatabase;
  let text: CliRun;
  let json: CliRun;

  beforeAll(async () => {
    database = await createTestDatabase('cli_dev');
    text = await runCli(['dev', '--database-url', database.url, '--log-level', 'info']);
    json = await runCli(['dev', '--database-url', database.url, '--json']);
  });

  afterAll(async () => {
    await database?.destroy();
  });

  it('exits 0 after the initial load', () => {
    expect(text.stderr).not.toContain('error:');
    expect(text.code).toBe(0);
    expect(json.code).toBe(0);
  });

  it('prints each step of the loop', () => {
    const lines = text.stdout.split('\n');
    expect(lines[0]).toMatch(/^database {2}127\.0\.0\.1:\d+\//);
    expect(lines[1]).toMatch(/^sqs {7}http:\/\/127\.0\.0\.1:\d+ {2}queue /);
    expect(lines.some((line) => /^commit {4}transaction \d+: \d+ object\(s\) marked in netbox_demo$/.test(line))).toBe(true);
    expect(lines.some((line) => /^sent {6}message for transaction \d+$/.test(line))).toBe(true);
    expect(lines.some((line) => /^received {2}\d+ message\(s\): /.test(line))).toBe(true);
    expect(lines.some((line) => /^drained {3}rebuilt [1-9]\d*, removed \d+, failed 0, dead 0 in \d+ ms$/.test(line))).toBe(true);
    expect(lines.some((line) => /^deleted {3}\d+ message\(s\)$/.test(line))).toBe(true);
  });

  it('prints search results after the drain', () => {
    expect(text.stdout).toContain('search    Substring of a name: "akron" (partial), 4 result(s)');
    expect(text.stdout).toContain('dcim.site #2  name: "DM-Akron" (weight 100)');
    expect(text.stdout).toContain('ipam.prefix #73  prefix: "192.168.0.0/22" (weight 110)');
    expect(text.stdout).toMatch(/summary {3}\d+ transactions committed/);
  });

  it('writes logs to stderr only', () => {
    expect(text.stderr).toContain('info: drainer: drain finished');
    expect(text.stdout).not.toContain('info:');
  });

  it('drains every message sent by a commit', () => {
    const summary = JSON.parse(json.stdout) as DevSummaryJson;
    expect(summary.transactions).toBeGreaterThan(10);
    expect(summary.messagesSent).toBe(summary.transactions);
    expect(summary.dispatchFailures).toBe(0);
    expect(summary.messagesReceived).toBe(summary.messagesSent);
    expect(summary.messagesDeleted).toBe(summary.messagesSent);
    expect(summary.sqsInvocations).toBeGreaterThan(0);
    expect(summary.rebuilt).toBeGreaterThan(0);
    expect(summary.failed).toBe(0);
    expect(summary.dead).toBe(0);
    expect(summary.pending).toBe(0);
    expect(summary.deadLetterMessages).toBe(0);
    expect(new URL(summary.sqsEndpoint).hostname).toBe('127.0.0.1');
  });

  it('leaves a searchable cache in the database', async () => {
    const summary = JSON.parse(json.stdout) as DevSummaryJson;
    expect(summary.searches[0]?.results.map((result) => result.value)).toContain('DM-Akron');
    const count = await sql<{ rows: string }>`SELECT count(*) AS rows FROM netbox_demo.search_cache`.execute(database.db);
    expect(Number(count.rows[0]?.rows)).toBeGreaterThan(1000);
  });

  it('rejects --watch with --json', async () => {
    const run = await runCli(['dev', '--database-url', database.url, '--watch', '--json']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--watch and --json cannot be combined');
  });
});
