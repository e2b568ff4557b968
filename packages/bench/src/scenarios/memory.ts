import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { BenchContext } from '../context.js';
import { truncateCache } from '../limit.js';
import type { Figure, ScenarioResult, TargetCheck } from '../results.js';
import { markSelection, pickObjects, prepareScaledData, selectionSize, truncateOutbox } from '../scale.js';
import type { Scenario } from '../scenario.js';
import { summarize } from '../stats.js';

const BACKLOGS = { smoke: { small: 100, large: 500 }, default: { small: 1_000, large: 100_000 }, full: { small: 1_000, large: 100_000 } } as const;
const TARGET_RATIO = 1.5;
/** Fresh processes per bundle import measurement. */
const IMPORT_RUNS = { smoke: 2, default: 10, full: 20 } as const;
const CHILD_TIMEOUT_MS = 15 * 60_000;
/** Settings that pass the drainer's validation at import; the pool connects on the first query only, so nothing connects. */
const DUMMY_LAMBDA_ENVIRONMENT = { DATABASE_URL: 'postgres://drainer:dummy@127.0.0.1:9/dummy', DB_SSL: 'disable', AWS_REGION: 'us-east-1' };

/**
 * Peak RSS of a drain at a small and a large backlog, in a fresh Node.js
 * process per measurement. Also the size and import time of the example's
 * Lambda bundle (packages/example-netbox/dist-lambda/sqs.mjs).
 */
export const memoryScenario: Scenario = {
  id: 'memory',
  title: 'Drain memory and Lambda bundle',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const { small, large } = BACKLOGS[context.size];
    const { data, counts } = await prepareScaledData(context, 'memory', { objects: large }, { fillCache: false });
    const figures: Figure[] = [];
    const peaks = new Map<number, number[]>();
    try {
      const db = data.database.db;
      for (const backlog of [small, large]) {
        const selection = await pickObjects(db, data.registry, backlog);
        const samples: number[] = [];
        for (let run = 0; run < context.runs; run += 1) {
          await truncateCache(db);
          await truncateOutbox(db);
          await markSelection(data.outbox, selection);
          const child = await runChild(data.database.url, context.dataDirectory);
          if (child.objects !== selectionSize(selection)) {
            throw new Error(`The child drained ${child.objects} objects; expected ${selectionSize(selection)}`);
          }
          samples.push(child.maxRssKb / 1024);
          context.log(`memory: backlog ${backlog}, run ${run + 1}: peak RSS ${(child.maxRssKb / 1024).toFixed(1)} MiB`);
        }
        peaks.set(backlog, samples);
        figures.push({ label: `drain peak RSS, ${backlog}-object backlog`, unit: 'MiB', summary: summarize(samples) });
      }
    } finally {
      await data.database.destroy();
    }

    const bundle = measureBundle(IMPORT_RUNS[context.size]);
    figures.push(
      { label: 'Lambda bundle sqs.mjs', unit: 'bytes', summary: summarize([bundle.bytes]) },
      { label: 'Lambda bundle sqs.mjs, gzip', unit: 'bytes', summary: summarize([bundle.gzipBytes]) },
      { label: 'Lambda bundle sqs.mjs, import time', unit: 'ms', summary: summarize(bundle.importMs) },
    );

    const ratio = summarize(peaks.get(large) ?? []).median / summarize(peaks.get(small) ?? []).median;
    const fullSize = large >= BACKLOGS.default.large;
    const met = ratio <= TARGET_RATIO && fullSize;
    const smallRun = `This run measured backlogs of ${small} and ${large} objects only; run with --size default or full to check the target.`;
    const targets: TargetCheck[] = [
      {
        target: `drain peak RSS at a ${BACKLOGS.default.large}-object backlog ≤ ${TARGET_RATIO} × that at ${BACKLOGS.default.small}`,
        measured: `${ratio.toFixed(2)} × (${large} against ${small} objects)`,
        met,
        ...(met ? {} : !fullSize ? { reason: smallRun } : { reason: 'Peak RSS grew with the backlog although the drain works batch by batch; this benchmark does not profile where the extra memory goes.' }),
      },
    ];
    return {
      id: this.id,
      title: this.title,
      parameters: { backlogs: `${small}, ${large}`, 'data objects': counts.objects, 'bundle import runs': IMPORT_RUNS[context.size] },
      figures,
      ratios: [
        {
          label: `peak RSS ${large} / ${small} backlog`,
          figure: `drain peak RSS, ${large}-object backlog`,
          baseline: `drain peak RSS, ${small}-object backlog`,
          value: ratio,
        },
      ],
      targets,
      notes: [
        'Each drain runs in a fresh Node.js process (one pool connection, default batch size 500); its peak RSS is process.resourceUsage().maxRSS at the end, so it includes Node.js itself and the loaded modules.',
        'Import time is `await import(sqs.mjs)` in a fresh Node.js process with dummy settings, excluding the start of Node.js; it is not a Lambda cold start.',
      ],
    };
  },
};

function runChild(url: string, dataDirectory: string): Promise<{ maxRssKb: number; objects: number }> {
  const script = fileURLToPath(new URL('./memory-drain-child.js', import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, url, dataDirectory], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) {
        reject(new Error(`memory-drain-child exited with ${code ?? signal}: ${stderr.trim()}`));
        return;
      }
      try {
        resolve(JSON.parse(stdout.trim()) as { maxRssKb: number; objects: number });
      } catch (error) {
        reject(new Error(`memory-drain-child printed invalid JSON: ${stdout.trim()}`, { cause: error }));
      }
    });
  });
}

/** Reads the size of the example's sqs.mjs bundle and times its import in fresh processes. */
function measureBundle(runs: number): { bytes: number; gzipBytes: number; importMs: number[] } {
  const require = createRequire(import.meta.url);
  // The package's main module is dist/index.js, one level below the package directory.
  const packageDirectory = dirname(dirname(require.resolve('@search-outbox/example-netbox')));
  const file = join(packageDirectory, 'dist-lambda', 'sqs.mjs');
  if (!existsSync(file)) {
    // The bundle is a build output outside turbo's build; make it as docs/lambda-bundle.md describes.
    const build = spawnSync(process.execPath, [join(packageDirectory, 'scripts', 'bundle-lambda.mjs')], {
      cwd: packageDirectory,
      encoding: 'utf8',
      timeout: 180_000,
    });
    if (build.status !== 0) throw new Error(`Bundling the Lambda functions failed with exit code ${build.status}: ${build.stderr}`);
  }
  const content = readFileSync(file);
  const importMs: number[] = [];
  for (let run = 0; run < runs; run += 1) importMs.push(measureImport(file));
  return { bytes: content.length, gzipBytes: gzipSync(content).length, importMs };
}

function measureImport(file: string): number {
  const script =
    'const start = process.hrtime.bigint();\n' +
    `await import(${JSON.stringify(pathToFileURL(file).href)});\n` +
    'process.stdout.write(String(Number(process.hrtime.bigint() - start) / 1e6));';
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { PATH: process.env.PATH ?? '', ...DUMMY_LAMBDA_ENVIRONMENT },
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (run.status !== 0) throw new Error(`Importing ${file} failed with exit code ${run.status}: ${run.stderr}`);
  return Number(run.stdout);
}
