import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvokeCommand, LambdaClient, type InvokeCommandInput, type InvokeCommandOutput } from '@aws-sdk/client-lambda';
import { runCli, type CliEnvironment } from '@search-outbox/cli';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test, vi } from 'vitest';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO_ROOT, 'packages/cli/dist/bin.js');
// The package exports only its index, so the command module is imported by its path.
const INVOKE_MODULE = join(REPO_ROOT, 'packages/cli/dist/commands/invoke.js');

const FUNCTION_NAME = 'search-outbox-drainer';

/**
 * Settings that keep every AWS SDK client of these tests away from AWS:
 * static dummy credentials (so the SDK never requests the EC2 metadata service),
 * no shared config or credentials files, and a region.
 */
const DUMMY_AWS_ENVIRONMENT = {
  AWS_REGION: 'us-east-1',
  AWS_ACCESS_KEY_ID: 'AKIAEXAMPLEDUMMY',
  AWS_SECRET_ACCESS_KEY: 'dummy-secret',
  AWS_CONFIG_FILE: '/nonexistent/aws-config',
  AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/aws-credentials',
  AWS_EC2_METADATA_DISABLED: 'true',
} as const;

// Patches LambdaClient.prototype.send, so that no client created in this process sends a request.
const lambdaMock = mockClient(LambdaClient);

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

const CLI_ENVIRONMENT: CliEnvironment = {
  databaseUrl: undefined,
  configPath: undefined,
  demoDataDirectory: undefined,
  cwd: REPO_ROOT,
  interactive: false,
};

/** Runs the CLI in this process, where the LambdaClient mock applies. */
async function runInProcess(args: readonly string[]): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await runCli(args, CLI_ENVIRONMENT, {
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
  });
  return { code, stdout, stderr };
}

/** Runs the built CLI in a child process with PATH and `env` only. */
function runChild(args: readonly string[], env: Record<string, string>): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: REPO_ROOT,
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

/** Builds a response of Lambda's Invoke API with `body` as the function's JSON result. */
function invokeResponse(body: unknown, functionError?: string): InvokeCommandOutput {
  return {
    $metadata: { httpStatusCode: 200 },
    StatusCode: 200,
    ExecutedVersion: '$LATEST',
    ...(functionError === undefined ? {} : { FunctionError: functionError }),
    Payload: new TextEncoder().encode(JSON.stringify(body)) as InvokeCommandOutput['Payload'],
  };
}

/** Returns the input of every InvokeCommand that the mock received. */
function sentInputs(): InvokeCommandInput[] {
  return lambdaMock.commandCalls(InvokeCommand).map((call) => call.args[0].input);
}

const DRAIN_SUMMARY = {
  claimed: 12,
  objects: 10,
  batches: 1,
  rebuilt: 9,
  removed: 1,
  failed: 0,
  dead: 0,
  skipped: 0,
  remaining: 0,
  stoppedBy: 'empty',
  durationMs: 41,
};

beforeEach(() => {
  lambdaMock.reset();
  for (const [name, value] of Object.entries(DUMMY_AWS_ENVIRONMENT)) vi.stubEnv(name, value);
  vi.stubEnv('SEARCH_OUTBOX_FUNCTION_NAME', undefined);
});

afterEach(() => {
  vi.unstubAllEnvs();
});

afterAll(() => {
  lambdaMock.restore();
});

describe('invoke with a mocked Lambda client', () => {
  test('status sends the exact request', async () => {
    lambdaMock.on(InvokeCommand).resolves(
      invokeResponse({ action: 'status', result: { pending: 3, oldestPendingAgeSeconds: 12.5, failed: 1, dead: 0, byType: [] } }),
    );

    const run = await runInProcess(['invoke', 'status', '--function-name', FUNCTION_NAME]);

    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(sentInputs()).toEqual([{ FunctionName: FUNCTION_NAME, InvocationType: 'RequestResponse', Payload: '{"action":"status"}' }]);
    expect(run.stdout).toContain('pending: 3');
    expect(run.stdout).toContain('oldest pending age: 12.5 s');
    expect(run.stdout).toContain('failed: 1');
  });

  test('drain options reach the payload', async () => {
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ action: 'drain', result: DRAIN_SUMMARY }));

    const run = await runInProcess(['invoke', 'drain', '--function-name', FUNCTION_NAME, '--batch-size', '100', '--max-batches', '2', '--json']);

    expect(run.code).toBe(0);
    const [input] = sentInputs();
    expect(input?.FunctionName).toBe(FUNCTION_NAME);
    expect(JSON.parse(String(input?.Payload))).toEqual({ action: 'drain', batchSize: 100, maxBatches: 2 });
    expect(JSON.parse(run.stdout)).toEqual({ action: 'drain', result: DRAIN_SUMMARY });
  });

  test('drain with failed objects exits 1', async () => {
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ action: 'drain', result: { ...DRAIN_SUMMARY, failed: 2 } }));

    const run = await runInProcess(['invoke', 'drain', '--function-name', FUNCTION_NAME]);

    expect(run.code).toBe(1);
    expect(run.stdout).toContain('failed 2');
  });

  test('rebuild options reach the payload', async () => {
    const result = {
      schema: 'netbox_demo',
      types: [{ objectType: 'dcim.site', objects: 4, rows: 20, staleRowsRemoved: 1, resumed: false }],
      undeclaredRowsRemoved: 0,
      aborted: true,
      durationMs: 900,
      resumable: true,
    };
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ action: 'rebuild', result }));

    const run = await runInProcess([
      'invoke',
      'rebuild',
      '--function-name',
      FUNCTION_NAME,
      '--types',
      'dcim.site, dcim.device',
      '--schema',
      'netbox_demo',
      '--chunk-size',
      '500',
      '--restart',
    ]);

    expect(run.code).toBe(0);
    expect(JSON.parse(String(sentInputs()[0]?.Payload))).toEqual({
      action: 'rebuild',
      objectTypes: ['dcim.site', 'dcim.device'],
      schema: 'netbox_demo',
      chunkSize: 500,
      restart: true,
    });
    expect(run.stdout).toContain('invoke again to resume');
    expect(run.stdout).toContain('dcim.site: 4 objects, 20 rows, 1 stale rows removed');
  });

  test('retry options reach the payload', async () => {
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ action: 'retry', result: { retried: 2 } }));

    const run = await runInProcess(['invoke', 'retry', '--function-name', FUNCTION_NAME, '--type', 'dcim.site', '--id', '7', '--id', '9']);

    expect(run.code).toBe(0);
    expect(JSON.parse(String(sentInputs()[0]?.Payload))).toEqual({ action: 'retry', objectType: 'dcim.site', objectIds: ['7', '9'] });
    expect(run.stdout).toContain('Made 2 dead outbox rows pending again');
  });

  test('function error exits 1 with its message', async () => {
    lambdaMock.on(InvokeCommand).resolves(
      invokeResponse(
        { errorType: 'ValidationError', errorMessage: 'Invalid DB_HOST: undefined is missing', trace: ['at readDrainerConfig'] },
        'Unhandled',
      ),
    );

    const run = await runInProcess(['invoke', 'status', '--function-name', FUNCTION_NAME]);

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('failed (Unhandled)');
    expect(run.stderr).toContain('ValidationError: Invalid DB_HOST: undefined is missing');
    expect(run.stdout).toBe('');
  });

  test('function error with --json prints it', async () => {
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ errorType: 'Error', errorMessage: 'connection refused' }, 'Unhandled'));

    const run = await runInProcess(['invoke', 'status', '--function-name', FUNCTION_NAME, '--json']);

    expect(run.code).toBe(1);
    expect(JSON.parse(run.stdout)).toEqual({ functionError: 'Unhandled', errorType: 'Error', errorMessage: 'connection refused' });
  });

  test('failed request exits 1', async () => {
    lambdaMock.on(InvokeCommand).rejects(new Error('Function not found: arn:aws:lambda:us-east-1:123456789012:function:missing'));

    const run = await runInProcess(['invoke', 'status', '--function-name', 'missing']);

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('Invoking the function missing failed: Function not found');
  });

  test('payload that is not JSON exits 1', async () => {
    lambdaMock.on(InvokeCommand).resolves({
      $metadata: {},
      StatusCode: 200,
      Payload: new TextEncoder().encode('<html>') as InvokeCommandOutput['Payload'],
    });

    const run = await runInProcess(['invoke', 'status', '--function-name', FUNCTION_NAME]);

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('returned a payload that is not JSON: <html>');
  });

  test('function name from the environment', async () => {
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ action: 'status', result: { pending: 0, oldestPendingAgeSeconds: null, failed: 0, dead: 0, byType: [] } }));
    vi.stubEnv('SEARCH_OUTBOX_FUNCTION_NAME', 'drainer-from-environment');

    const fromEnvironment = await runInProcess(['invoke', 'status']);
    const fromOption = await runInProcess(['invoke', 'status', '--function-name', 'drainer-from-option']);

    expect(fromEnvironment.code).toBe(0);
    expect(fromOption.code).toBe(0);
    expect(sentInputs().map((input) => input.FunctionName)).toEqual(['drainer-from-environment', 'drainer-from-option']);
  });

  test('region comes from the ARN unless --region is given', async () => {
    lambdaMock.on(InvokeCommand).resolves(invokeResponse({ action: 'retry', result: { retried: 0 } }));
    const arn = 'arn:aws:lambda:eu-central-1:123456789012:function:drainer:live';

    await runInProcess(['invoke', 'retry', '--function-name', arn]);
    await runInProcess(['invoke', 'retry', '--function-name', arn, '--region', 'eu-west-3']);
    await runInProcess(['invoke', 'retry', '--function-name', 'drainer']);

    const regions = await Promise.all(lambdaMock.send.getCalls().map((call) => (call.thisValue as LambdaClient).config.region()));
    expect(regions).toEqual(['eu-central-1', 'eu-west-3', DUMMY_AWS_ENVIRONMENT.AWS_REGION]);
    expect(sentInputs().map((input) => input.FunctionName)).toEqual([arn, arn, 'drainer']);
  });

  test('runInvoke uses the given client', async () => {
    const { runInvoke } = (await import(INVOKE_MODULE)) as typeof import('../../packages/cli/src/commands/invoke.js');
    const client = new LambdaClient({ region: 'ap-southeast-2' });
    const clientMock = mockClient(client);
    clientMock.on(InvokeCommand).resolves(invokeResponse({ action: 'drain', result: DRAIN_SUMMARY }));
    let stdout = '';

    const code = await runInvoke(
      'drain',
      { batchSize: '5' },
      { client, streams: { stdout: { write: (text) => (stdout += text) }, stderr: { write: () => true } }, environment: { SEARCH_OUTBOX_FUNCTION_NAME: 'injected' } },
    );

    expect(code).toBe(0);
    expect(clientMock.commandCalls(InvokeCommand).map((call) => call.args[0].input)).toEqual([
      { FunctionName: 'injected', InvocationType: 'RequestResponse', Payload: '{"action":"drain","batchSize":5}' },
    ]);
    expect(stdout).toContain('Claimed 12 outbox rows for 10 objects in 1 batches');
    clientMock.restore();
  });

  test.each([
    { args: ['nope', '--function-name', FUNCTION_NAME], names: '<action>' },
    { args: ['status', '--function-name', FUNCTION_NAME, '--batch-size', '5'], names: '--batch-size is an option of the drain action only' },
    { args: ['drain', '--function-name', FUNCTION_NAME, '--batch-size', '0'], names: 'Invalid --batch-size: "0" must be an integer from 1 to 10000' },
    { args: ['drain', '--function-name', FUNCTION_NAME, '--max-batches', 'many'], names: 'Invalid --max-batches' },
    { args: ['rebuild', '--function-name', FUNCTION_NAME, '--types', 'dcim.site,'], names: 'Invalid --types' },
    { args: ['rebuild', '--function-name', FUNCTION_NAME, '--schema', 'bad-schema'], names: 'Invalid --schema' },
    { args: ['retry', '--function-name', FUNCTION_NAME, '--id', '7'], names: 'Invalid --id: "7" needs --type' },
    { args: ['status', '--function-name', 'not a name'], names: 'Invalid --function-name' },
    { args: ['status', '--function-name', FUNCTION_NAME, '--region', 'Mars'], names: 'Invalid --region' },
    { args: ['status'], names: 'pass --function-name <name|arn> or set SEARCH_OUTBOX_FUNCTION_NAME' },
    { args: ['status', '--function-name', FUNCTION_NAME, '--database-url', 'postgres://127.0.0.1/x'], names: '--database-url does not apply' },
  ])('invalid input $args.0 $args.3 exits 2', async ({ args, names }) => {
    const run = await runInProcess(['invoke', ...args]);

    expect(run.code).toBe(2);
    expect(run.stderr).toContain(names);
    expect(lambdaMock.send.callCount).toBe(0);
  });
});

describe('invoke in a child process', () => {
  let server: Server;
  let endpoint: string;
  const requests: { url: string | undefined; body: string }[] = [];
  let respond: (request: IncomingMessage, body: string) => { status: number; headers: Record<string, string>; body: string };

  beforeAll(async () => {
    // A stand-in for the Lambda Invoke API on 127.0.0.1; AWS_ENDPOINT_URL_LAMBDA points the CLI's client at it.
    server = createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        requests.push({ url: request.url, body });
        const reply = respond(request, body);
        response.writeHead(reply.status, { 'content-type': 'application/json', ...reply.headers });
        response.end(reply.body);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
  });

  beforeEach(() => {
    requests.length = 0;
    respond = () => ({ status: 500, headers: {}, body: '{"message":"unexpected request"}' });
  });

  const childEnvironment = (): Record<string, string> => ({ ...DUMMY_AWS_ENVIRONMENT, AWS_ENDPOINT_URL_LAMBDA: endpoint });

  test('help lists actions and options', async () => {
    const run = await runChild(['invoke', '--help'], childEnvironment());

    expect(run.code).toBe(0);
    expect(run.stdout).toContain('drain, rebuild, status or retry');
    for (const option of ['--function-name', '--region', '--types', '--batch-size', '--max-batches', '--chunk-size', '--restart', '--type', '--id', '--json']) {
      expect(run.stdout).toContain(option);
    }
    expect(run.stdout).toContain('SEARCH_OUTBOX_FUNCTION_NAME');
    expect(run.stdout).not.toContain('--database-url');
  });

  test('bad action exits 2 without a request', async () => {
    const run = await runChild(['invoke', 'explode', '--function-name', FUNCTION_NAME], childEnvironment());

    expect(run.code).toBe(2);
    expect(run.stderr).toContain('Invalid <action>: "explode" must be one of drain, rebuild, status, retry');
    expect(requests).toEqual([]);
  });

  test('status through the AWS SDK', async () => {
    respond = () => ({
      status: 200,
      headers: { 'x-amz-executed-version': '$LATEST' },
      body: JSON.stringify({ action: 'status', result: { pending: 5, oldestPendingAgeSeconds: 2, failed: 0, dead: 1, byType: [] } }),
    });

    const run = await runChild(['invoke', 'status', '--function-name', FUNCTION_NAME, '--json'], childEnvironment());

    // On Node.js 20 the AWS SDK writes a NodeVersionSupportWarning to stderr, so only errors are ruled out.
    expect(run.stderr).not.toContain('error');
    expect(run.code).toBe(0);
    expect(requests).toEqual([{ url: `/2015-03-31/functions/${FUNCTION_NAME}/invocations`, body: '{"action":"status"}' }]);
    expect(JSON.parse(run.stdout)).toEqual({ action: 'status', result: { pending: 5, oldestPendingAgeSeconds: 2, failed: 0, dead: 1, byType: [] } });
  });

  test('function error through the AWS SDK', async () => {
    respond = () => ({
      status: 200,
      headers: { 'x-amz-function-error': 'Unhandled' },
      body: JSON.stringify({ errorType: 'Runtime.ImportModuleError', errorMessage: 'Invalid DB_SSL: "maybe" must be one of disable, require, verify-full' }),
    });

    const run = await runChild(['invoke', 'drain', '--function-name', FUNCTION_NAME], childEnvironment());

    expect(run.code).toBe(1);
    expect(run.stderr).toContain('Runtime.ImportModuleError: Invalid DB_SSL');
    expect(requests).toHaveLength(1);
  });
});
