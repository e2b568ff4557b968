#!/usr/bin/env node
// Measures the Lambda bundles in a directory. For each function it prints
// the file's size in bytes, and after gzip at zlib's default level 6. It
// also prints the module load time: the time of `await import(bundle)` in a
// fresh Node.js process, measured `--runs` times, as min, median and max.
//
//   node scripts/measure-lambda-bundle.mjs [--dir <directory>] [--runs <count>]
//
// --dir   directory of sqs.mjs, schedule.mjs and invoke.mjs (default: dist-lambda)
// --runs  fresh processes per function (default: 20)
//
// Each process gets PATH and dummy database settings: the handlers read and
// validate their settings at import, but the pool connects on the first
// query only, so the import opens no connection.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { FUNCTIONS } from './bundle-lambda.mjs';

const packageDirectory = fileURLToPath(new URL('../', import.meta.url));

/** Settings that pass the drainer's validation at import; nothing connects to this address. */
export const DUMMY_ENVIRONMENT = {
  DATABASE_URL: 'postgres://drainer:dummy@127.0.0.1:9/dummy',
  DB_SSL: 'disable',
  AWS_REGION: 'us-east-1',
};

/** Runs `import(file)` in a new Node.js process and returns the time the import took, in milliseconds. */
function measureImport(file) {
  const script =
    'const start = process.hrtime.bigint();\n' +
    `await import(${JSON.stringify(pathToFileURL(file).href)});\n` +
    'process.stdout.write(String(Number(process.hrtime.bigint() - start) / 1e6));';
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { PATH: process.env.PATH ?? '', ...DUMMY_ENVIRONMENT },
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`importing ${file} failed with exit code ${run.status}: ${run.stderr}`);
  return Number(run.stdout);
}

function median(sorted) {
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const { values } = parseArgs({ options: { dir: { type: 'string' }, runs: { type: 'string', default: '20' } } });
const directory = resolve(values.dir ?? resolve(packageDirectory, 'dist-lambda'));
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) {
  console.error(`error: invalid --runs: ${JSON.stringify(values.runs)} must be a positive integer`);
  process.exit(2);
}

console.log(`node ${process.version}, ${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} logical CPUs), ${runs} runs`);
console.log('| function | bytes | gzip bytes | import min ms | median ms | max ms |');
console.log('|---|---:|---:|---:|---:|---:|');
for (const name of FUNCTIONS) {
  const file = resolve(directory, `${name}.mjs`);
  const content = readFileSync(file);
  const times = Array.from({ length: runs }, () => measureImport(file)).sort((a, b) => a - b);
  const cells = [name, content.length, gzipSync(content).length, times[0], median(times), times[times.length - 1]];
  console.log(`| ${cells.map((cell) => (typeof cell === 'number' && !Number.isInteger(cell) ? cell.toFixed(1) : cell)).join(' | ')} |`);
}
