#!/usr/bin/env node
// Bundles the example application's Lambda entry with esbuild into one ESM
// file per function: <outdir>/sqs.mjs, schedule.mjs and invoke.mjs, each
// exporting `handler`, with a linked source map beside it.
//
//   node scripts/bundle-lambda.mjs [--outdir <directory>] [--external-aws-sdk]
//
// --outdir            output directory (default: dist-lambda in this package)
// --external-aws-sdk  leave @aws-sdk/* out of the bundle and load it from the
//                     runtime's SDK; only for comparing sizes and load times
//
// The packages of this workspace resolve to their dist/ directories, so run
// `npx turbo run build` first.
import { mkdirSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';

/** The functions of the drainer; src/lambda/<name>.ts re-exports that function's handler as `handler`. */
export const FUNCTIONS = ['sqs', 'schedule', 'invoke'];

const packageDirectory = fileURLToPath(new URL('../', import.meta.url));

// esbuild turns a require() of a Node.js built-in inside a bundled CommonJS
// package (pg, for example) into a call of `require`, which an ES module lacks.
const REQUIRE_BANNER =
  "import { createRequire as __bundleCreateRequire } from 'node:module';\n" +
  'const require = __bundleCreateRequire(import.meta.url);';

/**
 * Bundles every function into `outdir` and returns esbuild's metafile.
 * Removes the files of an earlier run in `outdir` first.
 */
export async function bundleLambda({ outdir = resolve(packageDirectory, 'dist-lambda'), externalAwsSdk = false } = {}) {
  rmSync(outdir, { recursive: true, force: true });
  mkdirSync(outdir, { recursive: true });
  const result = await build({
    absWorkingDir: packageDirectory,
    entryPoints: Object.fromEntries(FUNCTIONS.map((name) => [name, `src/lambda/${name}.ts`])),
    outdir,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    target: 'node22',
    format: 'esm',
    // The ES module builds of the AWS SDK and of other dual packages tree-shake better.
    mainFields: ['module', 'main'],
    banner: { js: REQUIRE_BANNER },
    minify: true,
    // Error classes name themselves after the class (ValidationError, for example), and
    // Lambda reports that name as errorType; minified names would read "_".
    keepNames: true,
    // A separate .map file, linked by a comment so that `node --enable-source-maps`
    // (NODE_OPTIONS on Lambda) finds it.
    sourcemap: 'linked',
    // pg loads pg-native only for `new pg.native.Pool()`, which the drainer never calls.
    external: ['pg-native', ...(externalAwsSdk ? ['@aws-sdk/*'] : [])],
    metafile: true,
    logLevel: 'warning',
  });
  return result.metafile;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: { outdir: { type: 'string' }, 'external-aws-sdk': { type: 'boolean', default: false } },
  });
  const outdir = resolve(values.outdir ?? resolve(packageDirectory, 'dist-lambda'));
  const metafile = await bundleLambda({ outdir, externalAwsSdk: values['external-aws-sdk'] });
  for (const [file, output] of Object.entries(metafile.outputs)) {
    if (!file.endsWith('.map')) console.log(`${file}  ${output.bytes} bytes`);
  }
}
