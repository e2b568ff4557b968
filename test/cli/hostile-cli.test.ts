import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createSearchOutbox, migrate } from '@search-outbox/core';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { closedPort } from '../support/network.js';

/**
 * Hostile arguments to the built `search-outbox` binary. Usage errors must
 * exit with 2 and runtime failures with 1, each with an `error:` line that
 * names the value, and never with a stack trace or an unhandled error.
 */

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO_ROOT, 'packages/cli/dist/bin.js');
const INDEXES = [{ objectType: 'test.widget', table: 'widget', fields: [{ name: 'name', weight: 100 }] }];
/** A value on which a regex with backreferences backtracks for much longer than the search's 5 s statement timeout. */
const BACKTRACKING_NAME = 'x'.repeat(301);

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

let database: TestDatabase;
let directory: string;
let config: string;

beforeAll(async () => {
  database = await createTestDatabase('hostile_cli');
  directory = mkdtempSync(join(tmpdir(), 'search-outbox-hostile-cli-'));
  config = join(directory, 'search-outbox.config.mjs');
  writeFileSync(config, `export const indexes = ${JSON.stringify(INDEXES)};\n`);

  await migrate(database.db);
  await sql`CREATE TABLE widget (id bigint PRIMARY KEY, name text NOT NULL)`.execute(database.db);
  await sql`INSERT INTO widget VALUES (1, 'Hostile Widget'), (2, ${BACKTRACKING_NAME})`.execute(database.db);
  const outbox = createSearchOutbox({ db: database.db, indexes: INDEXES, dispatcher: 'none' });
  await outbox.mark(database.db, 'test.widget', [1, 2]);
  await outbox.drain();
});

afterAll(async () => {
  await database?.destroy();
  if (directory !== undefined) rmSync(directory, { recursive: true, force: true });
});

/** Runs the built CLI with only PATH from the caller's environment, plus `env`. */
function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: directory,
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

function runWithDatabase(args: readonly string[]): Promise<CliRun> {
  return runCli([...args, '--config', config], { DATABASE_URL: database.url });
}

/** Checks that stderr is a clean error report: an `error:` line, no stack frame, no Node crash banner. */
function expectCleanError(run: CliRun, label: string): void {
  expect(run.stderr, label).toMatch(/^error: /m);
  expect(run.stderr, label).not.toMatch(/^\s+at /m);
  expect(run.stderr, label).not.toMatch(/Unhandled|UnhandledPromiseRejection|node:internal/);
}

/** A TCP server on 127.0.0.1 that accepts connections and never sends a byte, like a hung PostgreSQL. */
interface SilentServer {
  readonly port: number;
  close(): Promise<void>;
}

function startSilentServer(): Promise<SilentServer> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    // The client resets the connection when its timeout ends, which is expected here.
    socket.on('error', () => undefined);
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      const close = (): Promise<void> => {
        for (const socket of sockets) socket.destroy();
        return new Promise((closed) => server.close(() => closed()));
      };
      resolve({ port, close });
    });
  });
}

describe('hostile search arguments', () => {
  test('invalid --limit values exit 2', async () => {
    const values = ['0', '-1', '1001', '1e9', 'NaN', '1.5', '0x10', '', '99999999999999999999'];
    const runs = await Promise.all(values.map((value) => runWithDatabase(['search', 'widget', '--limit', value, '--json'])));

    runs.forEach((run, position) => {
      const label = `--limit ${JSON.stringify(values[position])}`;
      expect(run.code, label).toBe(2);
      expect(run.stdout, label).toBe('');
      expect(run.stderr, label).toContain(`Invalid --limit: ${JSON.stringify(values[position])} must be an integer from 1 to 1000`);
      expectCleanError(run, label);
    });
  });

  test('100 KB query exits 2', async () => {
    const query = 'q'.repeat(100_000);
    const run = await runWithDatabase(['search', query, '--json']);

    expect(run.code).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('(100000 characters)" must be at most 500 characters long');
    // The message shows the start of the value, not all 100,000 characters.
    expect(run.stderr.length).toBeLessThan(1_000);
    expectCleanError(run, '100 KB query');
  });

  test('blank query exits 2', async () => {
    const run = await runWithDatabase(['search', ' \t ']);

    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid query: " \\t " must not be empty');
    expectCleanError(run, 'blank query');
  });

  test('lone surrogate query exits 0', async () => {
    // argv is bytes: Node encodes the lone surrogate as U+FFFD for the child,
    // which then searches for that character and finds nothing.
    const run = await runWithDatabase(['search', '\uD800widget', '--json']);

    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual([]);
  });

  test('unknown options exit 2', async () => {
    const cases: [string[], string][] = [
      [['search', 'widget', '--fuzzy'], "unknown option '--fuzzy'"],
      [['search', 'hostile', 'widget'], 'too many arguments'],
      [['search'], "missing required argument 'query'"],
      [['search', 'widget', '--log-level', 'loud'], "argument 'loud' is invalid"],
      [['search', 'widget', '--type', 'test.gadget', '--json'], 'Invalid --type: "test.gadget" is not a declared object type'],
      [['search', 'widget', '--schema', 'bad-schema'], 'Invalid --schema: "bad-schema" is not a valid schema name'],
    ];
    const runs = await Promise.all(cases.map(([args]) => runWithDatabase(args)));

    runs.forEach((run, position) => {
      const [args, message] = cases[position] ?? [[], ''];
      const label = args.join(' ');
      expect(run.code, label).toBe(2);
      expect(run.stdout, label).toBe('');
      expect(run.stderr, label).toContain(message);
      expectCleanError(run, label);
    });
  });

  test('regex timeout advice fits CLI', async () => {
    const pattern = '^(x*)(x*)(x*)(x*)(x*)\\1\\2\\3\\4\\5$';
    const run = await runWithDatabase(['search', pattern, '--lookup', 'regex', '--json']);

    expect(run.code).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain(`Invalid query: ${JSON.stringify(pattern)} is too costly to match`);
    expectCleanError(run, 'regex timeout');
    // The message ends with "or raise timeoutMs", an option of the core
    // search API that the search command does not offer.
    expect(run.stderr).not.toContain('timeoutMs');
    expect(run.stderr).toContain('timed out after 5000 ms (--timeout)');
    expect(run.stderr).toContain('use a simpler pattern, for example one without backreferences, or raise --timeout');
  });

  test('regex timeout names --timeout value', async () => {
    const pattern = '^(x*)(x*)(x*)(x*)(x*)\\1\\2\\3\\4\\5$';
    const run = await runWithDatabase(['search', pattern, '--lookup', 'regex', '--timeout', '100', '--json']);

    expect(run.code).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain(`Invalid query: ${JSON.stringify(pattern)} is too costly to match`);
    expect(run.stderr).toContain('timed out after 100 ms (--timeout)');
    expectCleanError(run, 'regex timeout with --timeout 100');
  });

  test('--timeout maximum is accepted', async () => {
    // 600000 ms is also the largest timeoutMs of the core search, so the
    // value reaches the database and the search returns.
    const run = await runWithDatabase(['search', '^(x*)\\1$', '--lookup', 'regex', '--timeout', '600000', '--json']);

    expect(run.code).toBe(0);
    expect(run.stderr).toBe('');
    expect(JSON.parse(run.stdout)).toEqual([]);
  });

  test('invalid --timeout values exit 2', async () => {
    const values = ['0', '-1', '600001', '1.5', '1e3', 'abc', ''];
    const runs = await Promise.all(values.map((value) => runWithDatabase(['search', 'widget', '--timeout', value, '--json'])));

    runs.forEach((run, position) => {
      const label = `--timeout ${JSON.stringify(values[position])}`;
      expect(run.code, label).toBe(2);
      expect(run.stdout, label).toBe('');
      expect(run.stderr, label).toContain(`Invalid --timeout: ${JSON.stringify(values[position])} must be an integer from 1 to 600000`);
      expectCleanError(run, label);
    });
  });
});

describe('hostile options of other commands', () => {
  test('invalid numeric options exit 2', async () => {
    const cases: [string[], string][] = [
      [['rebuild', '--chunk-size', '50001'], 'Invalid --chunk-size: "50001"'],
      [['rebuild', '--chunk-size', '0', '--json'], 'Invalid --chunk-size: "0"'],
      [['drain', '--batch-size', '0'], 'Invalid --batch-size: "0"'],
      [['drain', '--max-batches', '-5'], 'Invalid --max-batches: "-5"'],
      [['drain', '--time-budget', '1.5', '--json'], 'Invalid --time-budget: "1.5"'],
      [['retry', '--type', 'test.widget', '--id', '7'.repeat(300)], '(300 characters)" must be 1 to 255 characters long'],
      [['retry', '--type', 'test.widget', '--id', ''], 'Invalid --id: "" must be 1 to 255 characters long'],
    ];
    const runs = await Promise.all(cases.map(([args]) => runWithDatabase(args)));

    runs.forEach((run, position) => {
      const [args, message] = cases[position] ?? [[], ''];
      const label = args.join(' ').slice(0, 80);
      expect(run.code, label).toBe(2);
      expect(run.stdout, label).toBe('');
      expect(run.stderr, label).toContain(message);
      expectCleanError(run, label);
    });
  });
});

describe('connection timeout', () => {
  test('invalid --connect-timeout values exit 2', async () => {
    const values = ['0', '3601', '1.5', 'ten', ''];
    const runs = await Promise.all(
      values.map((value) => runWithDatabase(['search', 'widget', '--connect-timeout', value, '--json'])),
    );

    runs.forEach((run, position) => {
      const label = `--connect-timeout ${JSON.stringify(values[position])}`;
      expect(run.code, label).toBe(2);
      expect(run.stdout, label).toBe('');
      expect(run.stderr, label).toContain(
        `Invalid --connect-timeout: ${JSON.stringify(values[position])} must be an integer from 1 to 3600`,
      );
      expectCleanError(run, label);
    });
  });

  test('invalid SEARCH_OUTBOX_CONNECT_TIMEOUT exits 2', async () => {
    const run = await runCli(['status', '--json'], { DATABASE_URL: database.url, SEARCH_OUTBOX_CONNECT_TIMEOUT: '-3' });

    expect(run.code).toBe(2);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('Invalid SEARCH_OUTBOX_CONNECT_TIMEOUT: "-3" must be an integer from 1 to 3600');
    expectCleanError(run, 'SEARCH_OUTBOX_CONNECT_TIMEOUT -3');
  });

  test('--connect-timeout overrides SEARCH_OUTBOX_CONNECT_TIMEOUT', async () => {
    const run = await runCli(['search', 'widget', '--config', config, '--connect-timeout', '30', '--json'], {
      DATABASE_URL: database.url,
      SEARCH_OUTBOX_CONNECT_TIMEOUT: 'invalid',
    });

    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toHaveLength(1);
  });

  test('silent server exits 1', async () => {
    const server = await startSilentServer();
    try {
      const url = `postgres://postgres@127.0.0.1:${server.port}/postgres`;
      const [fromOption, fromEnvironment] = await Promise.all([
        runCli(['search', 'widget', '--config', config, '--connect-timeout', '1', '--json'], { DATABASE_URL: url }),
        runCli(['status', '--json'], { DATABASE_URL: url, SEARCH_OUTBOX_CONNECT_TIMEOUT: '1' }),
      ]);

      expect(fromOption.code).toBe(1);
      expect(fromOption.stdout).toBe('');
      expect(fromOption.stderr).toContain(
        `error: Connecting to the database at 127.0.0.1:${server.port} timed out after 1 s (set by --connect-timeout)`,
      );
      expect(fromOption.stderr).toContain('or raise --connect-timeout');
      expectCleanError(fromOption, 'silent server, --connect-timeout');

      expect(fromEnvironment.code).toBe(1);
      expect(fromEnvironment.stdout).toBe('');
      expect(fromEnvironment.stderr).toContain('timed out after 1 s (set by SEARCH_OUTBOX_CONNECT_TIMEOUT)');
      expectCleanError(fromEnvironment, 'silent server, SEARCH_OUTBOX_CONNECT_TIMEOUT');
    } finally {
      await server.close();
    }
  });
});

describe('runtime failures', () => {
  test('schema without cache exits 1', async () => {
    const run = await runWithDatabase(['search', 'widget', '--schema', 'no_such_schema', '--json']);

    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toContain('Schema "no_such_schema" has no search_cache table');
    expectCleanError(run, 'schema without a cache');
  });

  test('unreachable database exits 1', async () => {
    const port = await closedPort();
    const run = await runCli(['search', 'widget', '--config', config, '--json'], {
      DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres`,
    });

    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expectCleanError(run, 'unreachable database');
  });
});

describe('hostile configuration modules', () => {
  test('never-loading configuration exits 2', async () => {
    // A module whose top-level await never settles, such as one that waits
    // for a secret that never arrives. Node then exits with code 13 when
    // nothing else keeps the event loop alive.
    const hanging = join(directory, 'hanging.config.mjs');
    writeFileSync(hanging, `await new Promise(() => {});\nexport const indexes = ${JSON.stringify(INDEXES)};\n`);
    const run = await runCli(['search', 'widget', '--config', hanging], { DATABASE_URL: database.url });

    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`Cannot load the configuration module ${hanging}: it never finished loading`);
    expectCleanError(run, 'hanging configuration');
  });

  test('stalled command exits 1', async () => {
    // A module that replaces pg's Pool.prototype.connect with a function
    // whose promise never settles. The command then waits with nothing left
    // to run, where Node would exit with code 13 and no message.
    const stalling = join(directory, 'stalling.config.mjs');
    const pgPath = join(REPO_ROOT, 'packages/cli/package.json');
    writeFileSync(
      stalling,
      [
        "import { createRequire } from 'node:module';",
        `const pg = createRequire(${JSON.stringify(pgPath)})('pg');`,
        'pg.Pool.prototype.connect = () => new Promise(() => {});',
        `export const indexes = ${JSON.stringify(INDEXES)};`,
        '',
      ].join('\n'),
    );
    const run = await runCli(['search', 'widget', '--config', stalling], { DATABASE_URL: database.url });

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('error: The command never finished');
    expectCleanError(run, 'stalled command');
  });

  test('throwing configuration exits 2', async () => {
    const throwing = join(directory, 'throwing.config.mjs');
    writeFileSync(throwing, 'throw new Error("configuration exploded");\n');
    const run = await runCli(['search', 'widget', '--config', throwing], { DATABASE_URL: database.url });

    expect(run.code).toBe(2);
    expect(run.stderr).toContain(`Cannot load the configuration module ${throwing}: configuration exploded`);
    expectCleanError(run, 'throwing configuration');
  });
});
