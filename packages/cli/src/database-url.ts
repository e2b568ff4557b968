import pg from 'pg';
import { errorMessage, ValidationError } from '@search-outbox/core';

const MASK = '****';

/**
 * Replaces the password of a connection string with `****`: everything from
 * the colon after the user name to the last `@`, and the value of a
 * `password=` query parameter. It works on strings that are not valid URLs
 * too, and masks too much rather than too little when an `@` follows the host.
 */
export function maskPassword(connectionString: string): string {
  return connectionString
    .replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/[^:@]*:).*@/s, `$1${MASK}@`)
    .replace(/([?&]password=)[^&#]*/gi, `$1${MASK}`);
}

/**
 * Checks a PostgreSQL connection string with pg's own parser, without
 * connecting. `source` is where the string came from (`--database-url` or
 * `DATABASE_URL`), so the ValidationError names it. The value in the message
 * has its password masked.
 */
export function checkDatabaseUrl(source: string, url: string): string {
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new ValidationError(
      source,
      maskPassword(url),
      'is not a PostgreSQL connection string. Expected postgres://user:password@host:port/database',
    );
  }
  try {
    // The Client constructor parses the string (pg-connection-string) and opens no socket.
    new pg.Client({ connectionString: url });
  } catch (error) {
    throw new ValidationError(
      source,
      maskPassword(url),
      `is not a valid connection string (${errorMessage(error)}). Expected postgres://user:password@host:port/database`,
    );
  }
  return url;
}

/**
 * Returns `host:port` of a connection string that checkDatabaseUrl accepted,
 * with pg's defaults (PGHOST, PGPORT, else localhost:5432) for missing parts.
 */
export function describeServer(url: string): string {
  const client = new pg.Client({ connectionString: url });
  return `${client.host}:${client.port}`;
}
