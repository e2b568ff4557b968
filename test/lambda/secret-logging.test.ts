import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { createSearchOutbox } from '@search-outbox/core';
import {
  createDrainerDatabase,
  createDrainerHandlers,
  createLambdaContext,
  createScheduledEvent,
  NUDGE_KIND,
  readDrainerConfig,
  toRecord,
  type DrainerHandlers,
} from '@search-outbox/lambda';
import type { SQSEvent } from 'aws-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test, vi } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { createFixtureTables, FIXTURE_INDEXES } from '../support/fixtures.js';
import { closedPort } from '../support/network.js';

/**
 * The drainer must never write a password, token or connection string to
 * its output, not even when the connection fails because of them. Every
 * case captures all of stdout and stderr at debug level, plus the message
 * and stack of what the handler throws (Lambda logs those too).
 */

const SECRET = 'Pa55-never-logged-7f3a9c';

let database: TestDatabase;
let output: string[];
const openHandlers: DrainerHandlers[] = [];

beforeAll(async () => {
  database = await createTestDatabase('secret_logging');
  await createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' }).migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await Promise.all(openHandlers.map((handlers) => handlers.database.close()));
  await database.destroy();
});

beforeEach(() => {
  output = [];
  // Powertools writes through a Console of its own, so the spies sit on the streams.
  for (const stream of [process.stdout, process.stderr]) {
    vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
      output.push(String(chunk));
      return true;
    });
  }
});

afterEach(() => {
  vi.restoreAllMocks();
});

function serverParts(): { host: string; port: string; user: string; name: string } {
  const url = new URL(database.url);
  return { host: url.hostname, port: url.port || '5432', user: decodeURIComponent(url.username), name: url.pathname.slice(1) };
}

/** Returns a URL of the test database with SECRET in place of the real password. */
function urlWithWrongPassword(): string {
  const url = new URL(database.url);
  url.password = SECRET;
  return url.toString();
}

/** An SQS event of one nudge, whose drain fails to connect like the other handlers. */
const SQS_EVENT: SQSEvent = {
  Records: [
    toRecord(
      {
        MessageId: 'message-1',
        ReceiptHandle: 'receipt-1',
        MD5OfBody: 'not-checked',
        Body: JSON.stringify({ kind: NUDGE_KIND, version: 1, schemas: ['public'], objects: 1, transactionIds: ['1'], sentAt: new Date().toISOString() }),
        Attributes: {
          ApproximateReceiveCount: '1',
          SentTimestamp: String(Date.now()),
          SenderId: 'AIDAEXAMPLE',
          ApproximateFirstReceiveTimestamp: String(Date.now()),
        },
      },
      'arn:aws:sqs:us-east-1:000000000000:drainer',
      'us-east-1',
    ),
  ],
};

function lambdaContext() {
  return createLambdaContext({ functionName: 'search-outbox-drainer', timeoutMs: 30_000 });
}

function handlersFrom(environment: Record<string, string>, database?: DrainerHandlers['database']): DrainerHandlers {
  const handlers = createDrainerHandlers({
    indexes: FIXTURE_INDEXES,
    environment: { DB_CONNECT_TIMEOUT_MS: '2000', ...environment },
    logger: new Logger({ serviceName: 'secret-logging', logLevel: 'DEBUG' }),
    metrics: new Metrics({ namespace: 'SearchOutboxTest', serviceName: 'secret-logging' }),
    ...(database === undefined ? {} : { database }),
  });
  openHandlers.push(handlers);
  return handlers;
}

/** Runs all three handlers, which fail to connect, and returns everything they wrote or threw. */
async function runFailingHandlers(handlers: DrainerHandlers): Promise<string> {
  const thrown: string[] = [];
  const record = (error: unknown): void => {
    thrown.push(String(error), (error as Error | undefined)?.stack ?? '');
  };
  await handlers.invoke({ action: 'status' }, lambdaContext()).catch(record);
  await handlers.schedule(createScheduledEvent(), lambdaContext()).catch(record);
  const response = await handlers.sqs(SQS_EVENT, lambdaContext()).catch(record);
  expect(thrown.length + (response?.batchItemFailures.length ?? 0)).toBeGreaterThan(0);
  // The capture must hold the handlers' own log lines, or the checks below prove nothing.
  expect(output.some((line) => line.includes('"service":"secret-logging"') && line.includes('"level":"ERROR"'))).toBe(true);
  return [...output, ...thrown].join('\n');
}

describe('drainer output', () => {
  test('hides a rejected URL password', async () => {
    const text = await runFailingHandlers(handlersFrom({ DATABASE_URL: urlWithWrongPassword(), DB_SSL: 'disable' }));

    expect(text).toMatch(/password authentication failed|authentication/i);
    expect(text).not.toContain(SECRET);
    expect(text).not.toContain(urlWithWrongPassword());
  });

  test('hides the URL of an unreachable server', async () => {
    const url = `postgres://drainer:${SECRET}@127.0.0.1:${await closedPort()}/app`;
    const text = await runFailingHandlers(handlersFrom({ DATABASE_URL: url, DB_SSL: 'disable' }));

    expect(text).toMatch(/ECONNREFUSED/);
    expect(text).not.toContain(SECRET);
    expect(text).not.toContain(url);
  });

  test('hides a Secrets Manager password', async () => {
    const parts = serverParts();
    const secrets = mockClient(SecretsManagerClient);
    secrets.on(GetSecretValueCommand).resolves({ SecretString: JSON.stringify({ username: parts.user, password: SECRET }) });
    try {
      const text = await runFailingHandlers(
        handlersFrom({
          DB_HOST: parts.host,
          DB_PORT: parts.port,
          DB_NAME: parts.name,
          DB_USER: parts.user,
          DB_SECRET_ID: 'arn:aws:secretsmanager:us-east-1:000000000000:secret:drainer-db',
          DB_SSL: 'disable',
          AWS_REGION: 'us-east-1',
        }),
      );

      expect(secrets.commandCalls(GetSecretValueCommand).length).toBeGreaterThan(0);
      expect(text).not.toContain(SECRET);
    } finally {
      secrets.restore();
    }
  });

  test('hides an IAM token', async () => {
    const parts = serverParts();
    const environment = {
      DB_HOST: parts.host,
      DB_PORT: parts.port,
      DB_NAME: parts.name,
      DB_USER: parts.user,
      DB_IAM_AUTH: 'true',
      DB_SSL: 'disable',
      DB_CONNECT_TIMEOUT_MS: '2000',
    };
    // The console writes to the spied streams, so the pool's own warnings are captured too.
    const drainerDatabase = createDrainerDatabase(readDrainerConfig(environment), console, {
      signer: { getAuthToken: async () => SECRET },
    });
    const text = await runFailingHandlers(handlersFrom(environment, drainerDatabase));

    expect(text).toMatch(/authentication/i);
    expect(text).not.toContain(SECRET);
  });

  test('hides the URL in configuration errors', () => {
    const messages: string[] = [];
    for (const url of [`mysql://drainer:${SECRET}@db/app`, `postgres//drainer:${SECRET}@db/app`]) {
      try {
        createDrainerHandlers({ indexes: FIXTURE_INDEXES, environment: { DATABASE_URL: url } });
      } catch (error) {
        messages.push(String(error), (error as Error).stack ?? '');
      }
    }

    expect(messages).toHaveLength(4);
    expect(messages.join('\n')).toContain('DATABASE_URL');
    expect(messages.join('\n')).not.toContain(SECRET);
  });
});
