import { ValidationError } from '@search-outbox/core';
import { validateQueueUrl } from './sqs-dispatcher.js';

/** Database credentials: a full connection string, or host and user with a password source. */
export type DatabaseCredentials =
  | { readonly kind: 'url'; readonly connectionString: string }
  /** The caller passes its own database to the handlers, so no settings are read. */
  | { readonly kind: 'provided' }
  | {
      readonly kind: 'secret' | 'iam';
      readonly host: string;
      readonly port: number;
      readonly database: string;
      readonly user: string;
      /** Secrets Manager secret id or ARN (kind `secret`); its JSON has at least `password`. */
      readonly secretId?: string;
    };

/** TLS to the database: `disable`, `require` (encrypt, trust any certificate) or `verify-full`. */
export type SslMode = 'disable' | 'require' | 'verify-full';

/** Settings of the drainer, after validation and defaults. */
export interface DrainerConfig {
  readonly database: DatabaseCredentials;
  readonly ssl: SslMode;
  /** Connections per function instance. Default: 2. */
  readonly poolMax: number;
  /** Server-side statement timeout in milliseconds. Default: 60000. */
  readonly statementTimeoutMs: number;
  /** Server-side idle-in-transaction timeout in milliseconds. Default: 30000. */
  readonly idleInTransactionTimeoutMs: number;
  /** Time to wait for a new connection, in milliseconds. Default: 5000. */
  readonly connectTimeoutMs: number;
  readonly outboxSchema: string;
  /** Cache schema that `rebuild` uses unless the payload names one. Default: `public`. */
  readonly cacheSchema: string;
  readonly batchSize: number;
  /** Time kept free before the Lambda deadline when draining, in milliseconds. Default: 5000. */
  readonly deadlineMarginMs: number;
  /** Queue for a follow-up nudge when a drain stops at the deadline with rows left. Default: none. */
  readonly queueUrl: string | undefined;
  readonly region: string | undefined;
}

/**
 * Environment variables read by the drainer. Explicit options win over
 * these, and these win over the defaults.
 */
export const ENVIRONMENT_VARIABLES = {
  databaseUrl: 'DATABASE_URL',
  host: 'DB_HOST',
  port: 'DB_PORT',
  database: 'DB_NAME',
  user: 'DB_USER',
  secretId: 'DB_SECRET_ID',
  iamAuth: 'DB_IAM_AUTH',
  ssl: 'DB_SSL',
  poolMax: 'DB_POOL_MAX',
  statementTimeoutMs: 'DB_STATEMENT_TIMEOUT_MS',
  idleInTransactionTimeoutMs: 'DB_IDLE_IN_TRANSACTION_TIMEOUT_MS',
  connectTimeoutMs: 'DB_CONNECT_TIMEOUT_MS',
  outboxSchema: 'SEARCH_OUTBOX_SCHEMA',
  cacheSchema: 'SEARCH_OUTBOX_CACHE_SCHEMA',
  batchSize: 'SEARCH_OUTBOX_BATCH_SIZE',
  deadlineMarginMs: 'SEARCH_OUTBOX_DEADLINE_MARGIN_MS',
  queueUrl: 'SEARCH_OUTBOX_QUEUE_URL',
  region: 'AWS_REGION',
} as const;

const SCHEMA_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
const SSL_MODES: readonly SslMode[] = ['disable', 'require', 'verify-full'];

/**
 * Reads and validates the drainer's settings once. Every error names the
 * environment variable (or option), the value and what is allowed; values
 * of secrets are never echoed.
 */
export function readDrainerConfig(
  environment: Readonly<Record<string, string | undefined>> = process.env,
  overrides: Partial<DrainerConfig> = {},
): DrainerConfig {
  const env = (name: keyof typeof ENVIRONMENT_VARIABLES): string | undefined => {
    const value = environment[ENVIRONMENT_VARIABLES[name]];
    return value === undefined || value.trim() === '' ? undefined : value.trim();
  };
  const integer = (name: keyof typeof ENVIRONMENT_VARIABLES, fallback: number, min: number, max: number): number => {
    const raw = env(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      throw new ValidationError(ENVIRONMENT_VARIABLES[name], raw, `must be an integer from ${min} to ${max}`);
    }
    return value;
  };
  const schema = (name: 'outboxSchema' | 'cacheSchema', fallback: string): string => {
    const value = env(name) ?? fallback;
    if (!SCHEMA_PATTERN.test(value)) {
      throw new ValidationError(ENVIRONMENT_VARIABLES[name], value, 'is not a valid schema name (letters, digits, underscores)');
    }
    return value;
  };

  const sslRaw = env('ssl') ?? 'verify-full';
  if (!SSL_MODES.includes(sslRaw as SslMode)) {
    throw new ValidationError(ENVIRONMENT_VARIABLES.ssl, sslRaw, `must be one of ${SSL_MODES.join(', ')}`);
  }
  const queueUrl = env('queueUrl');
  validateOverrides(overrides);

  return {
    database: overrides.database ?? readCredentials(env, integer),
    ssl: overrides.ssl ?? (sslRaw as SslMode),
    poolMax: overrides.poolMax ?? integer('poolMax', 2, 1, 20),
    statementTimeoutMs: overrides.statementTimeoutMs ?? integer('statementTimeoutMs', 60_000, 0, 900_000),
    idleInTransactionTimeoutMs:
      overrides.idleInTransactionTimeoutMs ?? integer('idleInTransactionTimeoutMs', 30_000, 0, 900_000),
    connectTimeoutMs: overrides.connectTimeoutMs ?? integer('connectTimeoutMs', 5_000, 100, 60_000),
    outboxSchema: overrides.outboxSchema ?? schema('outboxSchema', 'search_outbox'),
    cacheSchema: overrides.cacheSchema ?? schema('cacheSchema', 'public'),
    batchSize: overrides.batchSize ?? integer('batchSize', 500, 1, 10_000),
    deadlineMarginMs: overrides.deadlineMarginMs ?? integer('deadlineMarginMs', 5_000, 0, 600_000),
    queueUrl:
      overrides.queueUrl ?? (queueUrl === undefined ? undefined : validateQueueUrl(queueUrl, ENVIRONMENT_VARIABLES.queueUrl)),
    region: overrides.region ?? env('region'),
  };
}

/** Integer settings that code may pass in place of the environment, with their allowed range. */
const INTEGER_OVERRIDES = {
  poolMax: [1, 20],
  statementTimeoutMs: [0, 900_000],
  idleInTransactionTimeoutMs: [0, 900_000],
  connectTimeoutMs: [100, 60_000],
  batchSize: [1, 10_000],
  deadlineMarginMs: [0, 600_000],
} as const;

const CREDENTIAL_KINDS = ['url', 'provided', 'secret', 'iam'] as const;

/**
 * Checks settings passed in code with the rules of their environment
 * variables, so a bad value fails at startup and names the setting, not
 * later in the first query. Error paths start with `config.`.
 */
function validateOverrides(overrides: Partial<DrainerConfig>): void {
  if (typeof overrides !== 'object' || overrides === null || Array.isArray(overrides)) {
    throw new ValidationError('config', overrides, 'must be an object of drainer settings');
  }
  for (const [key, [min, max]] of Object.entries(INTEGER_OVERRIDES)) {
    const value: unknown = overrides[key as keyof typeof INTEGER_OVERRIDES];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
      throw new ValidationError(`config.${key}`, value, `must be an integer from ${min} to ${max}`);
    }
  }
  for (const key of ['outboxSchema', 'cacheSchema'] as const) {
    const value: unknown = overrides[key];
    if (value !== undefined && (typeof value !== 'string' || !SCHEMA_PATTERN.test(value))) {
      throw new ValidationError(`config.${key}`, value, 'is not a valid schema name (letters, digits, underscores)');
    }
  }
  if (overrides.ssl !== undefined && !SSL_MODES.includes(overrides.ssl)) {
    throw new ValidationError('config.ssl', overrides.ssl, `must be one of ${SSL_MODES.join(', ')}`);
  }
  if (overrides.queueUrl !== undefined) validateQueueUrl(overrides.queueUrl, 'config.queueUrl');
  const region: unknown = overrides.region;
  if (region !== undefined && (typeof region !== 'string' || region.trim() === '')) {
    throw new ValidationError('config.region', region, 'must be a non-empty string such as us-east-1');
  }
  if (overrides.database !== undefined) validateCredentials(overrides.database);
}

function validateCredentials(credentials: unknown): void {
  const kind = (credentials as { kind?: unknown } | null)?.kind;
  if (typeof credentials !== 'object' || credentials === null || !CREDENTIAL_KINDS.includes(kind as never)) {
    throw new ValidationError('config.database', credentials, `must be an object whose kind is one of ${CREDENTIAL_KINDS.join(', ')}`);
  }
  const fields = credentials as Record<string, unknown>;
  if (kind === 'url') {
    const url = fields.connectionString;
    if (typeof url !== 'string' || !/^postgres(ql)?:\/\//.test(url)) {
      // The value may contain a password, so the message does not show it.
      throw new ValidationError('config.database.connectionString', '(hidden)', 'must start with postgres:// or postgresql://');
    }
    return;
  }
  if (kind === 'provided') return;
  for (const key of ['host', 'database', 'user'] as const) {
    if (typeof fields[key] !== 'string' || (fields[key] as string).length === 0) {
      throw new ValidationError(`config.database.${key}`, fields[key], 'must be a non-empty string');
    }
  }
  const port = fields.port;
  if (typeof port !== 'number' || !Number.isSafeInteger(port) || port < 1 || port > 65_535) {
    throw new ValidationError('config.database.port', port, 'must be an integer from 1 to 65535');
  }
  if (kind === 'secret' && (typeof fields.secretId !== 'string' || fields.secretId.length === 0)) {
    throw new ValidationError('config.database.secretId', fields.secretId, 'must be the id or ARN of a Secrets Manager secret');
  }
}

function readCredentials(
  env: (name: keyof typeof ENVIRONMENT_VARIABLES) => string | undefined,
  integer: (name: keyof typeof ENVIRONMENT_VARIABLES, fallback: number, min: number, max: number) => number,
): DatabaseCredentials {
  const url = env('databaseUrl');
  if (url !== undefined) {
    if (!/^postgres(ql)?:\/\//.test(url)) {
      // The value may contain a password, so the message does not show it.
      throw new ValidationError(ENVIRONMENT_VARIABLES.databaseUrl, '(hidden)', 'must start with postgres:// or postgresql://');
    }
    return { kind: 'url', connectionString: url };
  }

  const host = env('host');
  const user = env('user');
  const secretId = env('secretId');
  const iam = env('iamAuth');
  if (iam !== undefined && iam !== 'true' && iam !== 'false') {
    throw new ValidationError(ENVIRONMENT_VARIABLES.iamAuth, iam, 'must be true or false');
  }
  if (host === undefined) {
    throw new ValidationError(
      ENVIRONMENT_VARIABLES.host,
      undefined,
      `is missing; set ${ENVIRONMENT_VARIABLES.databaseUrl}, or ${ENVIRONMENT_VARIABLES.host} with ${ENVIRONMENT_VARIABLES.user} and ${ENVIRONMENT_VARIABLES.secretId} or ${ENVIRONMENT_VARIABLES.iamAuth}=true`,
    );
  }
  if (user === undefined) throw new ValidationError(ENVIRONMENT_VARIABLES.user, undefined, 'is missing; name the database user');
  const useIam = iam === 'true';
  if (useIam === (secretId !== undefined)) {
    throw new ValidationError(
      ENVIRONMENT_VARIABLES.secretId,
      secretId ?? undefined,
      `and ${ENVIRONMENT_VARIABLES.iamAuth}=true are alternatives; set exactly one of them`,
    );
  }
  const base = { host, port: integer('port', 5432, 1, 65_535), database: env('database') ?? 'postgres', user };
  return useIam ? { kind: 'iam', ...base } : { kind: 'secret', ...base, secretId: secretId as string };
}
