import { Command } from 'commander';
import type { InvokeCommandOutput, LambdaClient } from '@aws-sdk/client-lambda';
import { errorMessage, ValidationError, type DrainSummary, type Logger, type OutboxStatus, type RebuildSummary } from '@search-outbox/core';
import type { InvokeAction, InvokePayload } from '@search-outbox/lambda';
import type { CliStreams } from '../context.js';
import { EXIT_FAILURE, EXIT_SUCCESS, UsageError, withOptionNames } from '../errors.js';
import { collect, parseOptionalInteger, parseSchema } from '../options.js';
import type { CommandBuilder } from '../program.js';

/** Environment variable with the function that `invoke` calls when --function-name is not given. */
export const FUNCTION_NAME_ENV = 'SEARCH_OUTBOX_FUNCTION_NAME';

/** Options of `invoke`, as commander parses them (numbers still text). */
export interface InvokeOptions {
  readonly functionName?: string;
  readonly region?: string;
  readonly types?: string;
  readonly schema?: string;
  readonly batchSize?: string;
  readonly maxBatches?: string;
  readonly chunkSize?: string;
  readonly restart?: boolean;
  readonly type?: string;
  readonly id?: string[];
  readonly json?: boolean;
}

export interface InvokeDependencies {
  readonly streams: CliStreams;
  /** Default: a LambdaClient for the region of --region, else of the ARN, else of the AWS SDK's configuration. */
  readonly client?: LambdaClient;
  /** Environment that `SEARCH_OUTBOX_FUNCTION_NAME` is read from. Default: `process.env`. */
  readonly environment?: Readonly<Record<string, string | undefined>>;
  readonly logger?: Logger;
}

/** The action that each action-specific option belongs to, and the option's name on the command line. */
const ACTION_OPTIONS = {
  batchSize: { option: '--batch-size', action: 'drain' },
  maxBatches: { option: '--max-batches', action: 'drain' },
  types: { option: '--types', action: 'rebuild' },
  schema: { option: '--schema', action: 'rebuild' },
  chunkSize: { option: '--chunk-size', action: 'rebuild' },
  restart: { option: '--restart', action: 'rebuild' },
  type: { option: '--type', action: 'retry' },
  id: { option: '--id', action: 'retry' },
} as const satisfies Partial<Record<keyof InvokeOptions, { option: string; action: InvokeAction }>>;

/** Payload fields of the invoke actions, and the options that set them. */
const OPTION_OF_FIELD: Readonly<Record<string, string>> = {
  batchSize: '--batch-size',
  maxBatches: '--max-batches',
  objectTypes: '--types',
  schema: '--schema',
  chunkSize: '--chunk-size',
  restart: '--restart',
  objectType: '--type',
  objectIds: '--id',
};

/**
 * Pattern of FunctionName in the Invoke operation of the AWS Lambda API
 * reference: a name, a partial or full ARN, optionally with `:version` or
 * `:alias`, at most 170 characters.
 */
const FUNCTION_NAME_PATTERN =
  /^(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_.]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?$/;
const FUNCTION_NAME_MAX_LENGTH = 170;
const ARN_REGION_PATTERN = /^arn:aws[a-zA-Z-]*:lambda:([a-z]{2}(-gov)?-[a-z]+-\d):/;
const REGION_PATTERN = /^[a-z]{2}(-[a-z]+)+-\d{1,2}$/;

export function registerInvoke(program: Command, build: CommandBuilder): void {
  const command = program
    .command('invoke')
    .description('Invoke the deployed drainer function with an action (drain, rebuild, status or retry) and print its result')
    .argument('<action>', 'drain, rebuild, status or retry')
    .option('--function-name <name>', `function name or ARN, optionally with :version or :alias (default: ${FUNCTION_NAME_ENV})`)
    .option('--region <region>', 'AWS region of the function (default: the region in the ARN, else AWS_REGION or the AWS profile)')
    .option('--batch-size <rows>', 'drain: outbox rows claimed per batch, 1 to 10000 (default: the function\'s setting)')
    .option('--max-batches <count>', 'drain: stop after this many batches (default: until empty or near the deadline)')
    .option('--types <objectTypes>', 'rebuild: comma-separated object types (default: every declared type)')
    .option('--schema <schema>', 'rebuild: cache schema (default: the function\'s setting)')
    .option('--chunk-size <objects>', 'rebuild: objects rebuilt per transaction, 1 to 50000')
    .option('--restart', 'rebuild: start over instead of resuming an interrupted rebuild')
    .option('--type <objectType>', 'retry: only dead rows of this object type (default: every type)')
    .option('--id <objectId>', 'retry: only dead rows of this object id; repeat for several; needs --type', collect)
    .addHelpText(
      'after',
      '\nThe function runs the action with its own database settings; the invocation waits for the result\n' +
        '(RequestResponse), with AWS credentials from the AWS SDK\'s default chain (environment, profile, SSO).\n' +
        'Exits with 1 when the function fails or reports objects that failed or became dead in a drain,\n' +
        'and with 2 on invalid input, before anything is sent.',
    );

  build(
    command,
    async (context, action: string, options: InvokeOptions) => {
      if (context.options.databaseUrl !== undefined) {
        throw new UsageError('--database-url does not apply to invoke: the function connects with its own settings');
      }
      return runInvoke(action, { ...options, json: context.json }, { streams: context.streams, logger: context.logger });
    },
    { config: false },
  );
  // The builder adds --database-url to every command; invoke rejects it, so its help leaves it out.
  command.options.find((option) => option.long === '--database-url')?.hideHelp();
}

/**
 * Validates the input, invokes the function and prints its result. Returns
 * the exit code. Throws a ValidationError or UsageError on invalid input,
 * before any request is sent, and an Error when the request fails.
 */
export async function runInvoke(action: string, options: InvokeOptions, dependencies: InvokeDependencies): Promise<number> {
  // @search-outbox/lambda and the AWS SDK take about 0.1 s to load, so only this command loads them.
  const { INVOKE_ACTIONS, parseInvokePayload } = await import('@search-outbox/lambda');
  if (!(INVOKE_ACTIONS as readonly string[]).includes(action)) {
    throw new ValidationError('<action>', action, `must be one of ${INVOKE_ACTIONS.join(', ')}`);
  }
  const payload = await withOptionNames(renamePayloadPath, async () =>
    parseInvokePayload(buildPayload(action as InvokeAction, options)),
  );
  const functionName = resolveFunctionName(options.functionName, dependencies.environment ?? process.env);
  const region = options.region === undefined ? ARN_REGION_PATTERN.exec(functionName)?.[1] : parseRegion(options.region);

  const { InvokeCommand, LambdaClient } = await import('@aws-sdk/client-lambda');
  const client = dependencies.client ?? new LambdaClient(region === undefined ? {} : { region });
  dependencies.logger?.debug('invoking the drainer function', { functionName, payload });
  let response: InvokeCommandOutput;
  try {
    response = await client.send(
      new InvokeCommand({ FunctionName: functionName, InvocationType: 'RequestResponse', Payload: JSON.stringify(payload) }),
    );
  } catch (error) {
    if (errorMessage(error) === 'Region is missing') {
      throw new UsageError('No AWS region given: pass --region, set AWS_REGION, or pass the function\'s full ARN', { cause: error });
    }
    throw new Error(`Invoking the function ${functionName} failed: ${errorMessage(error)}`, { cause: error });
  }
  return printResponse(functionName, payload, response, options.json === true, dependencies.streams);
}

/**
 * Builds the payload from the options. Throws a UsageError when an option
 * belongs to another action, and a ValidationError naming the option when
 * its value is invalid.
 */
export function buildPayload(action: InvokeAction, options: InvokeOptions): Record<string, unknown> {
  for (const [key, owner] of Object.entries(ACTION_OPTIONS)) {
    const value = options[key as keyof typeof ACTION_OPTIONS];
    if (value !== undefined && owner.action !== action) {
      throw new UsageError(`${owner.option} is an option of the ${owner.action} action only, not of ${action}`);
    }
  }
  if (options.id !== undefined && options.type === undefined) {
    throw new ValidationError('--id', options.id.join(', '), 'needs --type, because object ids are unique per type only');
  }

  const fields: Record<string, unknown> = {
    action,
    batchSize: parseOptionalInteger('--batch-size', options.batchSize, 1, 10_000),
    maxBatches: parseOptionalInteger('--max-batches', options.maxBatches, 1, 1_000_000_000),
    objectTypes: options.types === undefined ? undefined : parseTypeList(options.types),
    schema: options.schema === undefined ? undefined : parseSchema('--schema', options.schema),
    chunkSize: parseOptionalInteger('--chunk-size', options.chunkSize, 1, 50_000),
    restart: options.restart,
    objectType: options.type,
    objectIds: options.id,
  };
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

function parseTypeList(text: string): string[] {
  const types = text.split(',').map((type) => type.trim());
  if (types.some((type) => type === '')) {
    throw new ValidationError('--types', text, 'must be object types separated by commas, such as dcim.site,dcim.device');
  }
  return types;
}

function parseRegion(text: string): string {
  if (!REGION_PATTERN.test(text)) throw new ValidationError('--region', text, 'is not an AWS region name such as eu-west-1');
  return text;
}

function resolveFunctionName(option: string | undefined, environment: Readonly<Record<string, string | undefined>>): string {
  const fromEnvironment = environment[FUNCTION_NAME_ENV];
  const name = option ?? (fromEnvironment === '' ? undefined : fromEnvironment);
  if (name === undefined) {
    throw new UsageError(`No function given: pass --function-name <name|arn> or set ${FUNCTION_NAME_ENV}`);
  }
  if (name.length > FUNCTION_NAME_MAX_LENGTH || !FUNCTION_NAME_PATTERN.test(name)) {
    const source = option !== undefined ? '--function-name' : FUNCTION_NAME_ENV;
    throw new ValidationError(
      source,
      name,
      `is not a Lambda function name or ARN (at most ${FUNCTION_NAME_MAX_LENGTH} characters, such as my-drainer or arn:aws:lambda:eu-west-1:123456789012:function:my-drainer)`,
    );
  }
  return name;
}

/** Maps `payload.<field>` (and `payload.<field>[i]`) of parseInvokePayload to the option that sets the field. */
function renamePayloadPath(path: string): string | undefined {
  const field = /^payload\.([A-Za-z]+)(\[\d+\])?$/.exec(path)?.[1];
  return field === undefined ? undefined : OPTION_OF_FIELD[field];
}

/** Shape of the payload that Lambda returns when the function throws. */
interface FunctionErrorPayload {
  readonly errorType?: unknown;
  readonly errorMessage?: unknown;
}

function printResponse(
  functionName: string,
  payload: InvokePayload,
  response: InvokeCommandOutput,
  json: boolean,
  streams: CliStreams,
): number {
  const text = response.Payload === undefined ? '' : new TextDecoder().decode(response.Payload);
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch (error) {
    throw new Error(`The function ${functionName} returned a payload that is not JSON: ${text.slice(0, 200)}`, { cause: error });
  }

  if (response.FunctionError !== undefined) {
    const { errorType, errorMessage: remoteMessage } = (body ?? {}) as FunctionErrorPayload;
    const type = typeof errorType === 'string' ? errorType : 'Error';
    const message = typeof remoteMessage === 'string' ? remoteMessage : text;
    if (json) {
      streams.stdout.write(`${JSON.stringify({ functionError: response.FunctionError, errorType: type, errorMessage: message }, null, 2)}\n`);
    }
    streams.stderr.write(`error: the function ${functionName} failed (${response.FunctionError}): ${type}: ${message}\n`);
    return EXIT_FAILURE;
  }

  const result = (body as { result?: unknown } | undefined)?.result;
  if (json) {
    streams.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  } else {
    const lines = typeof result === 'object' && result !== null ? formatResult(payload.action, result) : [JSON.stringify(body)];
    streams.stdout.write(`${lines.join('\n')}\n`);
  }
  if (payload.action === 'drain' && typeof result === 'object' && result !== null) {
    const summary = result as Partial<DrainSummary>;
    if ((summary.failed ?? 0) > 0 || (summary.dead ?? 0) > 0) return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

/** Formats the function's JSON summary of an action for a terminal. */
function formatResult(action: InvokePayload['action'], result: object): string[] {
  switch (action) {
    case 'drain': {
      const summary = result as DrainSummary;
      return [
        `Claimed ${summary.claimed} outbox rows for ${summary.objects} objects in ${summary.batches} batches (${summary.durationMs} ms)`,
        `  rebuilt ${summary.rebuilt}, removed ${summary.removed}, failed ${summary.failed}, dead ${summary.dead}, skipped ${summary.skipped}`,
        `  remaining ${summary.remaining}; stopped: ${summary.stoppedBy}`,
      ];
    }
    case 'rebuild': {
      const summary = result as RebuildSummary & { resumable?: boolean };
      const lines = [
        `Rebuilt schema ${summary.schema} in ${summary.durationMs} ms` +
          (summary.resumable === true ? ' (stopped near the function\'s deadline: invoke again to resume)' : ''),
      ];
      for (const type of summary.types ?? []) {
        lines.push(`  ${type.objectType}: ${type.objects} objects, ${type.rows} rows, ${type.staleRowsRemoved} stale rows removed`);
      }
      return lines;
    }
    case 'status': {
      const status = result as OutboxStatus;
      const age = status.oldestPendingAgeSeconds === null ? '-' : `${status.oldestPendingAgeSeconds.toFixed(1)} s`;
      return [`pending: ${status.pending}`, `oldest pending age: ${age}`, `failed: ${status.failed}`, `dead: ${status.dead}`];
    }
    case 'retry':
      return [`Made ${(result as { retried?: number }).retried} dead outbox rows pending again`];
  }
}
