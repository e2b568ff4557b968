// Validation of the SearchOutboxDrainer props. Every check skips values that
// are unresolved tokens, because their value is known only at deployment.
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Duration, RemovalPolicy, Token } from 'aws-cdk-lib';
import * as logs from 'aws-cdk-lib/aws-logs';
import { ValidationError } from './errors.js';
import type {
  DrainerCredentials,
  DrainerDatabase,
  DrainerFunctionKind,
  DrainerHandlerNames,
  SearchOutboxDrainerProps,
} from './search-outbox-drainer.js';

export const FUNCTION_KINDS: readonly DrainerFunctionKind[] = ['sqs', 'schedule', 'invoke'];

/** File names looked for, in this order, when `entry` is a directory. */
const ENTRY_FILE_NAMES = ['handler.ts', 'handler.mts', 'handler.js', 'handler.mjs', 'index.ts', 'index.mts', 'index.js', 'index.mjs'];

const DEFAULT_HANDLERS: Readonly<Record<DrainerFunctionKind, string>> = {
  sqs: 'sqsHandler',
  schedule: 'scheduleHandler',
  invoke: 'invokeHandler',
};

/** Same rule as the drainer's own check of SEARCH_OUTBOX_SCHEMA and SEARCH_OUTBOX_CACHE_SCHEMA. */
const SCHEMA_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const IDENTIFIER_PATTERN = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
/** Lambda accepts environment variable names of letters, digits and underscores that start with a letter. */
const ENVIRONMENT_KEY_PATTERN = /^[A-Za-z][A-Za-z0-9_]*$/;
/** Resource ids of an RDS instance (`db-`), an Aurora cluster (`cluster-`) or an RDS Proxy (`prx-`). */
const RESOURCE_ID_PATTERN = /^(db|cluster|prx)-[A-Za-z0-9]+$/;

/** Names of the variables that the construct sets, which `environment` may not override. */
const MANAGED_ENVIRONMENT_KEYS = [
  'DB_HOST',
  'DB_PORT',
  'DB_NAME',
  'DB_USER',
  'DB_SSL',
  'DB_SECRET_ID',
  'DB_IAM_AUTH',
  'DATABASE_URL',
  'NODE_EXTRA_CA_CERTS',
  'NODE_OPTIONS',
  'POWERTOOLS_SERVICE_NAME',
  'POWERTOOLS_METRICS_NAMESPACE',
  'SEARCH_OUTBOX_SCHEMA',
  'SEARCH_OUTBOX_CACHE_SCHEMA',
  'SEARCH_OUTBOX_BATCH_SIZE',
  'SEARCH_OUTBOX_QUEUE_URL',
];

/** Props after validation, with the defaults applied. */
export interface DrainerSettings {
  readonly entry: string;
  readonly handlers: Readonly<Record<DrainerFunctionKind, string>>;
  readonly port: number;
  readonly ssl: 'require' | 'verify-full';
  readonly scheduleRate: Duration;
  readonly batchSize: number;
  readonly maxConcurrency: number;
  readonly timeout: Duration;
  readonly memorySize: number;
  readonly visibilityTimeout: Duration;
  readonly maxReceiveCount: number;
  readonly deadLetterRetention: Duration;
  readonly oldestPendingAgeThreshold: Duration;
  readonly errorsThreshold: number;
  readonly throttlesThreshold: number;
  readonly logRetention: logs.RetentionDays;
  readonly removalPolicy: RemovalPolicy;
}

/** Validates the props and applies the defaults. */
export function validateDrainerProps(props: SearchOutboxDrainerProps): DrainerSettings {
  const entry = resolveEntry(props.entry);
  const handlers = validateHandlers(props.handlers);

  // TypeScript requires both, but JavaScript callers may leave them out.
  if (typeof props.database !== 'object' || props.database === null) {
    throw new ValidationError('database', props.database, 'is missing; give host, name and user of the database');
  }
  if (typeof props.credentials !== 'object' || props.credentials === null) {
    throw new ValidationError('credentials', props.credentials, 'is missing; give { secret } or { iamAuthentication: true }');
  }
  validateDatabase(props.database);
  validateCredentials(props.credentials, props.database);
  const port = props.database.port ?? 5432;
  const ssl = props.ssl ?? 'verify-full';
  if (ssl !== 'require' && ssl !== 'verify-full') {
    throw new ValidationError('ssl', ssl, "must be 'require' or 'verify-full'");
  }
  validateSchema('outboxSchema', props.outboxSchema);
  validateSchema('cacheSchema', props.cacheSchema);
  if (props.securityGroups !== undefined && props.securityGroups.length === 0) {
    throw new ValidationError('securityGroups', [], 'must contain at least one security group; leave it out to have one created');
  }

  const scheduleRate = props.scheduleRate ?? Duration.minutes(5);
  validateDuration('scheduleRate', scheduleRate, 60, 24 * 60 * 60, 'minutes');
  const batchSize = props.batchSize ?? 10;
  validateInteger('batchSize', batchSize, 1, 10_000);
  validateBatchingWindow(props.maxBatchingWindow, batchSize);
  const maxConcurrency = props.maxConcurrency ?? 2;
  validateInteger('maxConcurrency', maxConcurrency, 2, 1000);
  const timeout = props.timeout ?? Duration.seconds(60);
  validateDuration('timeout', timeout, 1, 15 * 60);
  const memorySize = props.memorySize ?? 512;
  validateInteger('memorySize', memorySize, 128, 10_240, ' MB');
  if (props.drainBatchSize !== undefined) validateInteger('drainBatchSize', props.drainBatchSize, 1, 10_000);

  const visibilityTimeout = props.visibilityTimeout ?? defaultVisibilityTimeout(timeout);
  validateVisibilityTimeout(visibilityTimeout, timeout);
  const maxReceiveCount = props.maxReceiveCount ?? 5;
  validateInteger('maxReceiveCount', maxReceiveCount, 1, 1000);
  const deadLetterRetention = props.deadLetterRetention ?? Duration.days(14);
  validateDuration('deadLetterRetention', deadLetterRetention, 60, 14 * 24 * 60 * 60);

  const oldestPendingAgeThreshold = props.oldestPendingAgeThreshold ?? Duration.minutes(15);
  validateDuration('oldestPendingAgeThreshold', oldestPendingAgeThreshold, 1, Number.POSITIVE_INFINITY);
  const errorsThreshold = props.errorsThreshold ?? 1;
  validateInteger('errorsThreshold', errorsThreshold, 1, Number.MAX_SAFE_INTEGER);
  const throttlesThreshold = props.throttlesThreshold ?? 1;
  validateInteger('throttlesThreshold', throttlesThreshold, 1, Number.MAX_SAFE_INTEGER);

  const removalPolicy = props.removalPolicy ?? RemovalPolicy.RETAIN;
  if (removalPolicy === RemovalPolicy.SNAPSHOT) {
    throw new ValidationError('removalPolicy', removalPolicy, 'must be RETAIN, RETAIN_ON_UPDATE_OR_DELETE or DESTROY; queues and log groups have no snapshots');
  }
  validateEnvironment(props.environment);

  return {
    entry,
    handlers,
    port,
    ssl,
    scheduleRate,
    batchSize,
    maxConcurrency,
    timeout,
    memorySize,
    visibilityTimeout,
    maxReceiveCount,
    deadLetterRetention,
    oldestPendingAgeThreshold,
    errorsThreshold,
    throttlesThreshold,
    logRetention: props.logRetention ?? logs.RetentionDays.ONE_MONTH,
    removalPolicy,
  };
}

/** Returns the entry file: `entry` itself, or the first of {@link ENTRY_FILE_NAMES} in the directory `entry`. */
function resolveEntry(entry: string): string {
  const path = resolve(entry);
  if (!existsSync(path)) {
    throw new ValidationError('entry', entry, `was not found (resolved to ${path}); give the handler module or its directory`);
  }
  if (!statSync(path).isDirectory()) return path;

  const file = ENTRY_FILE_NAMES.map((name) => join(path, name)).find((candidate) => existsSync(candidate));
  if (file === undefined) {
    throw new ValidationError('entry', entry, `is a directory without any of ${ENTRY_FILE_NAMES.join(', ')}; give the handler module itself`);
  }
  return file;
}

function validateHandlers(handlers: DrainerHandlerNames | undefined): Record<DrainerFunctionKind, string> {
  const names = { ...DEFAULT_HANDLERS, ...handlers };
  for (const kind of FUNCTION_KINDS) {
    if (!IDENTIFIER_PATTERN.test(names[kind])) {
      throw new ValidationError(`handlers.${kind}`, names[kind], 'must be the name of an export of the entry module (a JavaScript identifier)');
    }
  }
  return names;
}

function validateDatabase(database: DrainerDatabase): void {
  for (const key of ['host', 'name', 'user'] as const) {
    const value = database[key];
    if (Token.isUnresolved(value)) continue;
    if (typeof value !== 'string' || value.trim() === '') {
      throw new ValidationError(`database.${key}`, value, 'must be a non-empty string');
    }
  }
  if (database.port !== undefined) validateInteger('database.port', database.port, 1, 65_535);
}

function validateCredentials(credentials: DrainerCredentials, database: DrainerDatabase): void {
  // TypeScript rejects both kinds at once, but JavaScript callers and casts do not.
  const fields = credentials as { secret?: unknown; iamAuthentication?: unknown; resourceId?: unknown };
  const named = (['secret', 'iamAuthentication'] as const).filter((key) => fields[key] !== undefined);
  if (named.length !== 1) {
    throw new ValidationError(
      'credentials',
      credentials,
      'must set exactly one of secret and iamAuthentication: true',
      named.length === 0 ? '{}' : `{ ${named.join(', ')} }`,
    );
  }
  if (fields.secret !== undefined) {
    if (fields.resourceId !== undefined) {
      throw new ValidationError('credentials.resourceId', fields.resourceId, 'applies only to iamAuthentication; remove it or drop secret');
    }
    return;
  }

  if (fields.iamAuthentication !== true) {
    throw new ValidationError('credentials.iamAuthentication', fields.iamAuthentication, 'must be true; give secret instead for password sign-in');
  }
  const resourceId = fields.resourceId;
  if (resourceId === undefined && database.proxy === undefined) {
    throw new ValidationError(
      'credentials.resourceId',
      undefined,
      'is required for iamAuthentication without database.proxy; give the resource id of the instance (db-...), cluster (cluster-...) or proxy (prx-...)',
    );
  }
  if (resourceId !== undefined && database.proxy !== undefined) {
    throw new ValidationError(
      'credentials.resourceId',
      resourceId,
      'and database.proxy are alternatives: with a proxy the permission names the proxy; remove one of them',
    );
  }
  if (resourceId !== undefined && !Token.isUnresolved(resourceId)) {
    if (typeof resourceId !== 'string' || !RESOURCE_ID_PATTERN.test(resourceId)) {
      throw new ValidationError(
        'credentials.resourceId',
        resourceId,
        'must be the resource id of an RDS instance (db-...), Aurora cluster (cluster-...) or RDS Proxy (prx-...), not its name or ARN',
      );
    }
  }
}

function validateSchema(prop: 'outboxSchema' | 'cacheSchema', schema: string | undefined): void {
  if (schema === undefined || Token.isUnresolved(schema)) return;
  if (!SCHEMA_PATTERN.test(schema)) {
    throw new ValidationError(prop, schema, 'must be a schema name of letters, digits and underscores, not starting with a digit, at most 63 characters');
  }
}

function validateBatchingWindow(window: Duration | undefined, batchSize: number): void {
  if (window !== undefined) validateDuration('maxBatchingWindow', window, 0, 5 * 60);
  if (Token.isUnresolved(batchSize) || batchSize <= 10) return;
  if (window === undefined || (!window.isUnresolved() && window.toMilliseconds() < 1000)) {
    throw new ValidationError(
      'batchSize',
      batchSize,
      `needs maxBatchingWindow of at least 1 second (given: ${window === undefined ? 'none' : formatDuration(window)}); SQS allows batches above 10 only with a batching window`,
    );
  }
}

/** Six times the timeout, or six times the maximum timeout of 15 minutes when the timeout is a token. */
function defaultVisibilityTimeout(timeout: Duration): Duration {
  if (timeout.isUnresolved()) return Duration.minutes(6 * 15);
  return Duration.seconds(6 * timeout.toSeconds());
}

function validateVisibilityTimeout(visibilityTimeout: Duration, timeout: Duration): void {
  validateDuration('visibilityTimeout', visibilityTimeout, 0, 12 * 60 * 60);
  if (visibilityTimeout.isUnresolved() || timeout.isUnresolved()) return;
  const minimum = 6 * timeout.toSeconds();
  if (visibilityTimeout.toSeconds() < minimum) {
    throw new ValidationError(
      'visibilityTimeout',
      visibilityTimeout,
      `must be at least 6 times timeout (6 x ${timeout.toSeconds()} = ${minimum} seconds)`,
      formatDuration(visibilityTimeout),
    );
  }
}

function validateEnvironment(environment: Record<string, string> | undefined): void {
  for (const [key, value] of Object.entries(environment ?? {})) {
    if (!ENVIRONMENT_KEY_PATTERN.test(key)) {
      throw new ValidationError('environment', key, 'is not a valid variable name: use letters, digits and underscores, starting with a letter');
    }
    if (MANAGED_ENVIRONMENT_KEYS.includes(key)) {
      throw new ValidationError('environment', key, 'is set by the construct from its props; set the matching prop instead');
    }
    if (typeof value !== 'string') {
      throw new ValidationError(`environment.${key}`, value, 'must be a string');
    }
  }
}

function validateInteger(prop: string, value: number, min: number, max: number, unit = ''): void {
  if (Token.isUnresolved(value)) return;
  if (!Number.isInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}${unit}`;
    throw new ValidationError(prop, value, `must be an integer ${range}`);
  }
}

/**
 * Checks that `duration` is a whole number of seconds (or of minutes, with
 * `unit` 'minutes') from `minSeconds` to `maxSeconds`.
 */
function validateDuration(prop: string, duration: Duration, minSeconds: number, maxSeconds: number, unit: 'seconds' | 'minutes' = 'seconds'): void {
  if (duration.isUnresolved()) return;
  const milliseconds = duration.toMilliseconds();
  const unitMilliseconds = unit === 'minutes' ? 60_000 : 1000;
  const shownValue = formatDuration(duration);
  if (milliseconds % unitMilliseconds !== 0) {
    throw new ValidationError(prop, duration, `must be a whole number of ${unit}`, shownValue);
  }
  if (milliseconds < minSeconds * 1000 || milliseconds > maxSeconds * 1000) {
    const range = maxSeconds === Number.POSITIVE_INFINITY ? `at least ${formatSeconds(minSeconds)}` : `from ${formatSeconds(minSeconds)} to ${formatSeconds(maxSeconds)}`;
    throw new ValidationError(prop, duration, `must be ${range}`, shownValue);
  }
}

/** Formats a duration in seconds, or in milliseconds when it is not a whole number of seconds. */
export function formatDuration(duration: Duration): string {
  const milliseconds = duration.toMilliseconds();
  return milliseconds % 1000 === 0 ? formatSeconds(milliseconds / 1000) : `${milliseconds} milliseconds`;
}

function formatSeconds(seconds: number): string {
  return seconds === 1 ? '1 second' : `${seconds} seconds`;
}
