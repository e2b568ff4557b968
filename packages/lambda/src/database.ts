import { Signer } from '@aws-sdk/rds-signer';
import { errorMessage, SearchOutboxError, type Logger } from '@search-outbox/core';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import type { DrainerConfig, SslMode } from './config.js';

/** The drainer's database: one small pool per function instance, reused across invocations. */
export interface DrainerDatabase {
  readonly db: Kysely<any>;
  /** Stores the Secrets Manager secret, so that new connections use its current password. */
  setSecret(secret: unknown): void;
  close(): Promise<void>;
}

export interface DrainerDatabaseOptions {
  /** Signs RDS IAM tokens. Default: a Signer for the configured host, port, user and region. */
  readonly signer?: Pick<Signer, 'getAuthToken'>;
}

/** RDS IAM tokens are valid for 15 minutes; a new one is signed after this many milliseconds. */
const IAM_TOKEN_REUSE_MS = 10 * 60 * 1000;

/**
 * Creates the pool lazily (pg connects on the first query) with server-side
 * statement and idle-in-transaction timeouts. A connection that dies, for
 * example while the function was frozen, is logged and dropped by the pool
 * instead of crashing the process. `withReconnect` runs the work again.
 */
export function createDrainerDatabase(
  config: DrainerConfig,
  logger: Logger,
  options: DrainerDatabaseOptions = {},
): DrainerDatabase {
  let secretPassword: string | undefined;
  const credentials = config.database;
  const poolConfig: pg.PoolConfig = {
    max: config.poolMax,
    connectionTimeoutMillis: config.connectTimeoutMs,
    statement_timeout: config.statementTimeoutMs,
    idle_in_transaction_session_timeout: config.idleInTransactionTimeoutMs,
    keepAlive: true,
    application_name: 'search-outbox-drainer',
  };

  if (credentials.kind === 'provided') {
    throw new SearchOutboxError('No database settings: pass DATABASE_URL or DB_HOST settings, or a database to the handlers');
  }
  if (credentials.kind === 'url') {
    poolConfig.connectionString = credentials.connectionString;
  } else {
    poolConfig.host = credentials.host;
    poolConfig.port = credentials.port;
    poolConfig.database = credentials.database;
    poolConfig.user = credentials.user;
    poolConfig.password =
      credentials.kind === 'iam'
        ? iamPassword(config, options.signer)
        : async () => {
            if (secretPassword === undefined) {
              throw new SearchOutboxError(
                'The database secret has not been loaded; the secrets middleware must run before the handler connects',
              );
            }
            return secretPassword;
          };
  }
  const ssl = sslOptions(config.ssl);
  if (ssl !== undefined) poolConfig.ssl = ssl;

  const pool = new pg.Pool(poolConfig);
  pool.on('error', (error) => {
    logger.warn('idle database connection failed; the pool drops it', { error: error.message });
  });
  pool.on('connect', (client) => {
    client.on('error', (error) => {
      logger.warn('database connection failed', { error: error.message });
    });
  });

  return {
    db: new Kysely<any>({ dialect: new PostgresDialect({ pool }) }),
    setSecret(secret: unknown) {
      secretPassword = passwordFromSecret(secret);
    },
    async close() {
      await pool.end();
    },
  };
}

function iamPassword(config: DrainerConfig, signer: Pick<Signer, 'getAuthToken'> | undefined): () => Promise<string> {
  const credentials = config.database;
  if (credentials.kind === 'url' || credentials.kind === 'provided') {
    throw new SearchOutboxError('IAM authentication needs a host and a user');
  }
  const tokenSigner =
    signer ??
    new Signer({
      hostname: credentials.host,
      port: credentials.port,
      username: credentials.user,
      ...(config.region === undefined ? {} : { region: config.region }),
    });
  let cached: { token: string; expires: number } | undefined;
  return async () => {
    if (cached === undefined || cached.expires <= Date.now()) {
      cached = { token: await tokenSigner.getAuthToken(), expires: Date.now() + IAM_TOKEN_REUSE_MS };
    }
    return cached.token;
  };
}

function passwordFromSecret(secret: unknown): string {
  const parsed = typeof secret === 'string' ? safeParse(secret) : secret;
  const password = (parsed as { password?: unknown } | null)?.password;
  if (typeof password !== 'string' || password.length === 0) {
    throw new SearchOutboxError('The database secret has no "password" string; store the RDS secret JSON format');
  }
  return password;
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function sslOptions(mode: SslMode): pg.PoolConfig['ssl'] | undefined {
  if (mode === 'disable') return undefined;
  // verify-full checks the chain and the host name. On Lambda, set
  // NODE_EXTRA_CA_CERTS=/var/runtime/ca-cert.pem so that Node trusts the RDS CAs.
  return mode === 'require' ? { rejectUnauthorized: false } : { rejectUnauthorized: true };
}

const CONNECTION_ERROR_PATTERN =
  /Connection terminated|ECONNRESET|EPIPE|ECONNREFUSED|Client has encountered a connection error|Connection ended unexpectedly|timeout exceeded when trying to connect/i;

/**
 * Returns whether an error means the connection, not the work, failed:
 * SQLSTATE class 08, an administrator or crash shutdown (57P01 to 57P03),
 * or a socket error from the driver.
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && (code.startsWith('08') || ['57P01', '57P02', '57P03'].includes(code))) return true;
  return CONNECTION_ERROR_PATTERN.test(errorMessage(error));
}

/**
 * Runs `work`, and runs it again when it failed on a dead connection, at
 * most `retries` times (default 1). After a restart or failover every idle
 * connection of the pool may be dead, and each retry can draw another of
 * them before the pool opens a new one, so callers pass the pool size. Safe
 * for drains, rebuilds and reads: their transactions roll back whole, and a
 * retry starts from what is committed.
 */
export async function withReconnect<T>(
  work: () => Promise<T>,
  logger: Logger,
  what: string,
  options: { readonly retries?: number } = {},
): Promise<T> {
  const retries = options.retries ?? 1;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await work();
    } catch (error) {
      if (!isConnectionError(error) || attempt > retries) throw error;
      logger.warn(`${what} failed on a dead database connection; retrying with another connection`, {
        error: errorMessage(error),
        retry: attempt,
        maxRetries: retries,
      });
    }
  }
}
