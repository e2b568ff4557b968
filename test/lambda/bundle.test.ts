import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

const PACKAGE_DIRECTORY = fileURLToPath(new URL('../../packages/example-netbox/', import.meta.url));
const BUNDLE_SCRIPT = join(PACKAGE_DIRECTORY, 'scripts/bundle-lambda.mjs');
const FUNCTIONS = ['sqs', 'schedule', 'invoke'] as const;

/**
 * Settings that pass the drainer's validation at import. The handlers
 * connect on the first query only, and no test here runs one. The AWS
 * settings keep any SDK client off the EC2 metadata service and shared files.
 */
const DUMMY_ENVIRONMENT = {
  DATABASE_URL: 'postgres://drainer:dummy@127.0.0.1:9/dummy',
  DB_SSL: 'disable',
  AWS_REGION: 'us-east-1',
  AWS_ACCESS_KEY_ID: 'AKIAEXAMPLEDUMMY',
  AWS_SECRET_ACCESS_KEY: 'dummy-secret',
  AWS_CONFIG_FILE: '/nonexistent/aws-config',
  AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/aws-credentials',
  AWS_EC2_METADATA_DISABLED: 'true',
};

/** Prefix of the line on which the child process reports what it found; Powertools log lines share stdout. */
const RESULT_PREFIX = 'BUNDLE-TEST-RESULT ';

interface ProcessRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function runNode(args: readonly string[], options: { cwd: string; env: Record<string, string> }): Promise<ProcessRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Imports `bundle` in a fresh Node.js process whose working directory has no
 * node_modules, so every import that the bundle did not inline fails. It
 * reports the export names, the type of `handler`, and the rejection of an
 * invocation with `event` when one is given.
 */
async function importBundle(bundle: string, cwd: string, event?: unknown) {
  const script = `
    const bundle = await import(${JSON.stringify(pathToFileURL(bundle).href)});
    const result = { exports: Object.keys(bundle).sort(), handlerType: typeof bundle.handler };
    if (${JSON.stringify(event !== undefined)}) {
      const context = { functionName: 'drainer', awsRequestId: 'request-1', getRemainingTimeInMillis: () => 60000 };
      try {
        result.resolved = await bundle.handler(${JSON.stringify(event)}, context);
      } catch (error) {
        result.rejected = { name: error.name, message: error.message };
      }
    }
    console.log(${JSON.stringify(RESULT_PREFIX)} + JSON.stringify(result));
  `;
  const run = await runNode(['--input-type=module', '-e', script], {
    cwd,
    env: { PATH: process.env.PATH ?? '', ...DUMMY_ENVIRONMENT },
  });
  const line = run.stdout.split('\n').find((text) => text.startsWith(RESULT_PREFIX));
  if (run.code !== 0 || line === undefined) {
    throw new Error(`importing ${bundle} failed with exit code ${run.code}\nstdout: ${run.stdout}\nstderr: ${run.stderr}`);
  }
  return JSON.parse(line.slice(RESULT_PREFIX.length)) as {
    exports: string[];
    handlerType: string;
    resolved?: unknown;
    rejected?: { name: string; message: string };
  };
}

describe('Lambda bundles of the example', () => {
  let outdir: string;
  let emptyDirectory: string;

  beforeAll(async () => {
    outdir = mkdtempSync(join(tmpdir(), 'search-outbox-bundle-'));
    emptyDirectory = mkdtempSync(join(tmpdir(), 'search-outbox-bundle-cwd-'));
    const run = await runNode([BUNDLE_SCRIPT, '--outdir', outdir], { cwd: PACKAGE_DIRECTORY, env: { PATH: process.env.PATH ?? '' } });
    if (run.code !== 0) throw new Error(`the bundle script failed with exit code ${run.code}: ${run.stderr}`);
  });

  afterAll(() => {
    rmSync(outdir, { recursive: true, force: true });
    rmSync(emptyDirectory, { recursive: true, force: true });
  });

  test.each(FUNCTIONS)('%s bundle exports handler', async (name) => {
    const bundle = join(outdir, `${name}.mjs`);

    expect(existsSync(`${bundle}.map`)).toBe(true);
    const result = await importBundle(bundle, emptyDirectory);
    expect(result.exports).toEqual(['handler']);
    expect(result.handlerType).toBe('function');
  });

  test('invoke bundle rejects an unknown action', async () => {
    const result = await importBundle(join(outdir, 'invoke.mjs'), emptyDirectory, { action: 'nope' });

    expect(result.resolved).toBeUndefined();
    expect(result.rejected?.name).toBe('ValidationError');
    expect(result.rejected?.message).toContain('payload.action');
    expect(result.rejected?.message).toContain('must be one of drain, rebuild, status, retry');
  });
});
