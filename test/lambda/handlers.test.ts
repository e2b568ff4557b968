import { Logger } from '@aws-lambda-powertools/logger';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { GetSecretValueCommand, SecretsManagerClient } from '@aws-sdk/client-secrets-manager';
import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { createSearchOutbox, silentLogger, type SearchOutbox } from '@search-outbox/core';
import {
  createDrainerDatabase,
  createDrainerHandlers,
  createSqsDispatcher,
  NUDGE_KIND,
  readDrainerConfig,
  withReconnect,
  type DrainerDatabase,
} from '@search-outbox/lambda';
import type { Context, SQSEvent, SQSRecord } from 'aws-lambda';
import { mockClient } from 'aws-sdk-client-mock';
import { Kysely, PostgresDialect, sql } from 'kysely';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test, vi } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites } from '../support/fixtures.js';

let database: TestDatabase;
let outbox: SearchOutbox;
const openDatabases: DrainerDatabase[] = [];

beforeAll(async () => {
  database = await createTestDatabase('lambda_handlers');
  outbox = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await outbox.migrate();
  await createFixtureTables(database.db);
});

afterAll(async () => {
  await Promise.all(openDatabases.map((open) => open.close()));
  await database.destroy();
});

let output: string[];

beforeEach(async () => {
  output = [];
  // Powertools writes log lines and metrics (CloudWatch embedded metric
  // format) to stdout through a Console of its own; the spies capture them.
  // Its development mode would use the global console but disables metrics.
  for (const stream of [process.stdout, process.stderr]) {
    vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
      output.push(...String(chunk).split('\n').filter((line) => line.length > 0));
      return true;
    });
  }
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site CASCADE`.execute(database.db);
});

afterEach(() => {
  vi.restoreAllMocks();
});

function sharedDatabase(): DrainerDatabase {
  return { db: database.db, setSecret: () => {}, close: async () => {} };
}

function handlersFor(drainerDatabase: DrainerDatabase = sharedDatabase(), environment: Record<string, string> = {}) {
  return createDrainerHandlers({
    indexes: FIXTURE_INDEXES,
    database: drainerDatabase,
    environment: { DATABASE_URL: database.url, DB_SSL: 'disable', ...environment },
    logger: new Logger({ serviceName: 'test-drainer', logLevel: 'INFO' }),
    metrics: new Metrics({ namespace: 'SearchOutboxTest', serviceName: 'test-drainer' }),
  });
}

function lambdaContext(remainingMs = 60_000): Context {
  const deadline = Date.now() + remainingMs;
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: 'search-outbox-drainer',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:search-outbox-drainer',
    memoryLimitInMB: '256',
    awsRequestId: `request-${Math.random().toString(16).slice(2)}`,
    logGroupName: '/aws/lambda/search-outbox-drainer',
    logStreamName: 'test',
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: () => {},
    fail: () => {},
    succeed: () => {},
  };
}

function sqsRecord(messageId: string, body: string): SQSRecord {
  return {
    messageId,
    receiptHandle: `receipt-${messageId}`,
    body,
    attributes: {
      ApproximateReceiveCount: '1',
      SentTimestamp: String(Date.now()),
      SenderId: 'AIDAEXAMPLE',
      ApproximateFirstReceiveTimestamp: String(Date.now()),
    },
    messageAttributes: {},
    md5OfBody: 'not-checked',
    eventSource: 'aws:sqs',
    eventSourceARN: 'arn:aws:sqs:us-east-1:000000000000:drainer',
    awsRegion: 'us-east-1',
  };
}

function nudge(transactionIds: string[] = ['1']): string {
  return JSON.stringify({
    kind: NUDGE_KIND,
    version: 1,
    schemas: ['public'],
    objects: 1,
    transactionIds,
    sentAt: new Date().toISOString(),
  });
}

async function markSites(count: number): Promise<void> {
  const sites = Array.from({ length: count }, (_, position) => fullSite(position + 1, `Lambda Site ${position + 1}`));
  await insertSites(database.db, sites);
  await outbox.mark(
    database.db,
    'dcim.site',
    sites.map((site) => site.id),
  );
}

function emittedMetrics(): Record<string, number> {
  const values: Record<string, number> = {};
  for (const line of output) {
    if (!line.includes('"_aws"')) continue;
    const emf = JSON.parse(line) as Record<string, unknown> & { _aws: { CloudWatchMetrics: { Metrics: { Name: string }[] }[] } };
    for (const metric of emf._aws.CloudWatchMetrics[0]?.Metrics ?? []) {
      values[metric.Name] = emf[metric.Name] as number;
    }
  }
  return values;
}

describe('SQS handler', () => {
  test('drains and reports only malformed records', async () => {
    await markSites(3);
    const event: SQSEvent = {
      Records: [
        sqsRecord('good-1', nudge()),
        sqsRecord('not-json', '{oops'),
        sqsRecord('wrong-shape', JSON.stringify({ kind: NUDGE_KIND, version: 2 })),
        sqsRecord('good-2', nudge(['2', '3'])),
      ],
    };
    const response = await handlersFor().sqs(event, lambdaContext());

    expect(response.batchItemFailures).toEqual([{ itemIdentifier: 'not-json' }, { itemIdentifier: 'wrong-shape' }]);
    expect(await countOutbox(database.db)).toBe(0);
    expect(await outbox.search({ query: 'Lambda Site' })).toHaveLength(3);
    expect(output.some((line) => line.includes('rejected a malformed SQS record') && line.includes('not-json'))).toBe(true);
  });

  test('reports every record when the drain fails', async () => {
    const unmigrated = await createTestDatabase('lambda_unmigrated');
    try {
      const handlers = handlersFor({ db: unmigrated.db, setSecret: () => {}, close: async () => {} });
      const event: SQSEvent = { Records: [sqsRecord('a', nudge()), sqsRecord('b', nudge()), sqsRecord('bad', 'x')] };
      const response = await handlers.sqs(event, lambdaContext());

      expect(response.batchItemFailures).toEqual([{ itemIdentifier: 'a' }, { itemIdentifier: 'b' }, { itemIdentifier: 'bad' }]);
      expect(output.some((line) => line.includes('drain failed; every record is reported failed'))).toBe(true);
    } finally {
      await unmigrated.destroy();
    }
  });

  test('handles a thrown value that is no Error', async () => {
    const failingPool = {
      connect: async () => {
        throw 'pool exhausted';
      },
      end: async () => {},
    };
    const throwing = new Kysely<any>({ dialect: new PostgresDialect({ pool: failingPool as never }) });
    const handlers = handlersFor({ db: throwing, setSecret: () => {}, close: async () => {} });
    const response = await handlers.sqs({ Records: [sqsRecord('only', nudge())] }, lambdaContext());

    expect(response.batchItemFailures).toEqual([{ itemIdentifier: 'only' }]);
    expect(output.some((line) => line.includes('pool exhausted'))).toBe(true);
  });

  test('rejects an event without records', async () => {
    await expect(handlersFor().sqs({} as SQSEvent, lambdaContext())).rejects.toThrow(
      /Invalid event.Records: undefined must be an array of SQS records/,
    );
  });

  test('drains nothing for malformed records only', async () => {
    await markSites(1);
    const response = await handlersFor().sqs({ Records: [sqsRecord('junk', '[]')] }, lambdaContext());

    expect(response.batchItemFailures).toEqual([{ itemIdentifier: 'junk' }]);
    expect(await countOutbox(database.db)).toBe(1);
  });

  test('stops at the deadline and leaves rows pending', async () => {
    await markSites(5);
    const handlers = handlersFor(sharedDatabase(), { SEARCH_OUTBOX_DEADLINE_MARGIN_MS: '5000' });
    const response = await handlers.sqs({ Records: [sqsRecord('late', nudge())] }, lambdaContext(1000));

    expect(response.batchItemFailures).toEqual([]);
    expect(await countOutbox(database.db)).toBe(5);
    expect(output.some((line) => line.includes('the scheduled sweep continues'))).toBe(true);
  });
});

describe('schedule handler', () => {
  test('sweeps and emits the lag metrics', async () => {
    await markSites(4);
    const result = await handlersFor().schedule(
      { id: 'e', version: '0', account: '0', time: '', region: 'us-east-1', resources: [], source: 'aws.events', 'detail-type': 'Scheduled Event', detail: {} },
      lambdaContext(),
    );

    expect(result.drain.rebuilt).toBe(4);
    expect(result.status.pending).toBe(0);
    const metrics = emittedMetrics();
    expect(metrics.Rebuilt).toBe(4);
    expect(metrics.PendingRows).toBe(0);
    expect(metrics.DeadRows).toBe(0);
    expect(metrics.OldestPendingAge).toBe(0);
    expect(typeof metrics.DrainDuration).toBe('number');
  });
});

describe('invoke handler', () => {
  test('runs status, drain, rebuild and retry', async () => {
    await markSites(2);
    const handlers = handlersFor();

    const status = await handlers.invoke({ action: 'status' }, lambdaContext());
    expect(status).toMatchObject({ action: 'status', result: { pending: 2, dead: 0 } });

    const drain = await handlers.invoke({ action: 'drain', batchSize: 1 }, lambdaContext());
    expect(drain).toMatchObject({ action: 'drain', result: { claimed: 2, rebuilt: 2, batches: 2 } });

    const rebuild = await handlers.invoke({ action: 'rebuild', objectTypes: ['dcim.site'] }, lambdaContext());
    expect(rebuild).toMatchObject({
      action: 'rebuild',
      result: { schema: 'public', aborted: false, resumable: false, types: [{ objectType: 'dcim.site', objects: 2 }] },
    });

    const retry = await handlers.invoke({ action: 'retry', objectType: 'dcim.site' }, lambdaContext());
    expect(retry).toEqual({ action: 'retry', result: { retried: 0 } });
  });

  test.each([
    ['no object', null, /Invalid payload: null must be an object/],
    ['an unknown action', { action: 'nope' }, /Invalid payload.action: "nope" must be one of drain, rebuild, status, retry/],
    ['a string batch size', { action: 'drain', batchSize: '5' }, /Invalid payload.batchSize: "5" must be a positive integer/],
    ['an extra field', { action: 'status', verbose: true }, /Invalid payload.verbose: true is not a field of action "status", which accepts no other fields/],
    ['a bad restart flag', { action: 'rebuild', restart: 'yes' }, /Invalid payload.restart: "yes" must be true or false/],
    ['an empty type list', { action: 'rebuild', objectTypes: [] }, /Invalid payload.objectTypes: \[\] must be a non-empty array/],
    ['an unknown type', { action: 'rebuild', objectTypes: ['dcim.cable'] }, /Invalid objectTypes\[0\]: "dcim.cable" is not a declared object type/],
  ])('rejects %s', async (_label, payload, message) => {
    await expect(handlersFor().invoke(payload, lambdaContext())).rejects.toThrow(message);
  });
});

describe('database access', () => {
  function connectionParts(): { host: string; port: string; user: string; password: string; name: string } {
    const url = new URL(database.url);
    return {
      host: url.hostname,
      port: url.port || '5432',
      user: decodeURIComponent(url.username),
      password: decodeURIComponent(url.password),
      name: url.pathname.slice(1),
    };
  }

  test('recovers from a terminated backend', async () => {
    const config = readDrainerConfig({ DATABASE_URL: database.url, DB_SSL: 'disable' });
    const own = createDrainerDatabase(config, silentLogger);
    openDatabases.push(own);
    const handlers = handlersFor(own);
    await handlers.invoke({ action: 'status' }, lambdaContext());

    const terminated = await sql<{ count: string }>`
      SELECT count(pg_terminate_backend(pid)) AS count FROM pg_stat_activity
      WHERE application_name = 'search-outbox-drainer' AND datname = current_database()
    `.execute(database.db);
    expect(Number(terminated.rows[0]?.count)).toBeGreaterThan(0);

    await markSites(2);
    const drain = await handlers.invoke({ action: 'drain' }, lambdaContext());
    expect(drain).toMatchObject({ result: { rebuilt: 2 } });
  });

  test('retries once per dead pooled connection', async () => {
    const deadConnection = Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });
    const failTwice = () => {
      let calls = 0;
      return async () => {
        calls += 1;
        if (calls <= 2) throw deadConnection;
        return calls;
      };
    };

    await expect(withReconnect(failTwice(), silentLogger, 'drain', { retries: 2 })).resolves.toBe(3);
    await expect(withReconnect(failTwice(), silentLogger, 'drain')).rejects.toBe(deadConnection);
    const notConnection = new Error('relation "site" does not exist');
    await expect(withReconnect(async () => Promise.reject(notConnection), silentLogger, 'drain', { retries: 5 })).rejects.toBe(notConnection);
  });

  test('reads the password from Secrets Manager', async () => {
    const parts = connectionParts();
    const secrets = mockClient(SecretsManagerClient);
    secrets.on(GetSecretValueCommand).resolves({
      SecretString: JSON.stringify({ username: parts.user, password: parts.password }),
    });
    try {
      const environment = {
        DB_HOST: parts.host,
        DB_PORT: parts.port,
        DB_NAME: parts.name,
        DB_USER: parts.user,
        DB_SECRET_ID: 'arn:aws:secretsmanager:us-east-1:000000000000:secret:drainer-db',
        DB_SSL: 'disable',
        AWS_REGION: 'us-east-1',
      };
      const config = readDrainerConfig(environment);
      const own = createDrainerDatabase(config, silentLogger);
      openDatabases.push(own);
      const handlers = createDrainerHandlers({
        indexes: FIXTURE_INDEXES,
        environment,
        logger: new Logger({ logLevel: 'SILENT' }),
        metrics: new Metrics({ namespace: 'SearchOutboxTest' }),
      });
      openDatabases.push(handlers.database);
      const status = await handlers.invoke({ action: 'status' }, lambdaContext());

      expect(status).toMatchObject({ action: 'status', result: { pending: 0 } });
      expect(secrets.commandCalls(GetSecretValueCommand)[0]?.args[0].input).toEqual({
        SecretId: 'arn:aws:secretsmanager:us-east-1:000000000000:secret:drainer-db',
      });
    } finally {
      secrets.restore();
    }
  });

  test('signs in with an RDS IAM token', async () => {
    const parts = connectionParts();
    const config = readDrainerConfig({
      DB_HOST: parts.host,
      DB_PORT: parts.port,
      DB_NAME: parts.name,
      DB_USER: parts.user,
      DB_IAM_AUTH: 'true',
      DB_SSL: 'disable',
    });
    let signed = 0;
    const own = createDrainerDatabase(config, silentLogger, {
      signer: {
        getAuthToken: async () => {
          signed += 1;
          return parts.password;
        },
      },
    });
    openDatabases.push(own);
    const status = await handlersFor(own).invoke({ action: 'status' }, lambdaContext());

    expect(status).toMatchObject({ action: 'status' });
    expect(signed).toBe(1);
  });
});

describe('configuration', () => {
  test.each([
    ['no database settings', {}, /Invalid DB_HOST: undefined is missing; set DATABASE_URL, or DB_HOST/],
    ['a host without user', { DB_HOST: 'db.internal' }, /Invalid DB_USER: undefined is missing/],
    [
      'both secret and IAM',
      { DB_HOST: 'h', DB_USER: 'u', DB_SECRET_ID: 's', DB_IAM_AUTH: 'true' },
      /DB_SECRET_ID: "s" and DB_IAM_AUTH=true are alternatives; set exactly one of them/,
    ],
    ['a bad port', { DB_HOST: 'h', DB_USER: 'u', DB_SECRET_ID: 's', DB_PORT: 'http' }, /Invalid DB_PORT: "http" must be an integer from 1 to 65535/],
    ['a bad SSL mode', { DATABASE_URL: 'postgres://x', DB_SSL: 'maybe' }, /Invalid DB_SSL: "maybe" must be one of disable, require, verify-full/],
    ['a bad batch size', { DATABASE_URL: 'postgres://x', SEARCH_OUTBOX_BATCH_SIZE: '0' }, /SEARCH_OUTBOX_BATCH_SIZE: "0" must be an integer from 1 to 10000/],
    ['a bad schema', { DATABASE_URL: 'postgres://x', SEARCH_OUTBOX_SCHEMA: 'a-b' }, /SEARCH_OUTBOX_SCHEMA: "a-b" is not a valid schema name/],
    ['a bad queue URL', { DATABASE_URL: 'postgres://x', SEARCH_OUTBOX_QUEUE_URL: 'queue' }, /SEARCH_OUTBOX_QUEUE_URL: "queue" is not a valid URL/],
  ])('rejects %s', (_label, environment, message) => {
    expect(() => readDrainerConfig(environment)).toThrow(message);
  });

  test.each([
    ['a pool size of 0', { poolMax: 0 }, /Invalid config.poolMax: 0 must be an integer from 1 to 20/],
    ['a string batch size', { batchSize: '500' }, /Invalid config.batchSize: "500" must be an integer from 1 to 10000/],
    ['an unsafe schema', { cacheSchema: 'public; DROP TABLE x' }, /Invalid config.cacheSchema: "public; DROP TABLE x" is not a valid schema name/],
    ['an unknown SSL mode', { ssl: 'prefer' }, /Invalid config.ssl: "prefer" must be one of disable, require, verify-full/],
    ['a queue URL that is no URL', { queueUrl: 'queue' }, /Invalid config.queueUrl: "queue" is not a valid URL/],
    ['an empty region', { region: ' ' }, /Invalid config.region: " " must be a non-empty string/],
    ['an unknown credential kind', { database: { kind: 'password' } }, /Invalid config.database: \{"kind":"password"\} must be an object whose kind is one of url, provided, secret, iam/],
    ['a secret without an id', { database: { kind: 'secret', host: 'h', port: 5432, database: 'd', user: 'u' } }, /Invalid config.database.secretId: undefined must be the id or ARN/],
    ['an IAM port of 0', { database: { kind: 'iam', host: 'h', port: 0, database: 'd', user: 'u' } }, /Invalid config.database.port: 0 must be an integer from 1 to 65535/],
  ])('rejects %s passed in code', (_label, overrides, message) => {
    expect(() => readDrainerConfig({ DATABASE_URL: 'postgres://x' }, overrides as never)).toThrow(message);
  });

  test('hides a connection string passed in code', () => {
    const overrides = { database: { kind: 'url' as const, connectionString: 'mysql://user:s3cret@host/db' } };
    expect(() => readDrainerConfig({}, overrides)).toThrow(/config.database.connectionString: "\(hidden\)"/);
    expect(() => readDrainerConfig({}, overrides)).not.toThrow(/s3cret/);
  });

  test('never shows the connection string', () => {
    expect(() => readDrainerConfig({ DATABASE_URL: 'mysql://user:s3cret@host/db' })).toThrow(/DATABASE_URL: "\(hidden\)"/);
    expect(() => readDrainerConfig({ DATABASE_URL: 'mysql://user:s3cret@host/db' })).not.toThrow(/s3cret/);
  });

  test('needs no settings for a database passed in', () => {
    const handlers = createDrainerHandlers({
      indexes: FIXTURE_INDEXES,
      database: sharedDatabase(),
      environment: {},
      logger: new Logger({ logLevel: 'SILENT' }),
      metrics: new Metrics({ namespace: 'SearchOutboxTest' }),
    });

    expect(handlers.config.database).toEqual({ kind: 'provided' });
  });

  test('applies defaults', () => {
    const config = readDrainerConfig({ DATABASE_URL: 'postgres://u:p@127.0.0.1/db' });

    expect(config).toMatchObject({
      ssl: 'verify-full',
      poolMax: 2,
      statementTimeoutMs: 60_000,
      idleInTransactionTimeoutMs: 30_000,
      outboxSchema: 'search_outbox',
      cacheSchema: 'public',
      batchSize: 500,
      deadlineMarginMs: 5_000,
      queueUrl: undefined,
    });
  });
});

describe('SQS dispatcher', () => {
  test('sends one nudge per committed transaction', async () => {
    const sqs = mockClient(SQSClient);
    sqs.on(SendMessageCommand).resolves({ MessageId: 'm-1' });
    try {
      const queueUrl = 'https://sqs.us-east-1.amazonaws.com/000000000000/drainer';
      const app = createSearchOutbox({
        db: database.db,
        indexes: FIXTURE_INDEXES,
        dispatcher: createSqsDispatcher({ queueUrl, client: new SQSClient({ region: 'us-east-1' }) }),
      });
      const transactionId = await app.transaction(async (trx) => {
        await app.mark(trx, 'dcim.site', [1, 2]);
        const marked = await app.mark(trx, 'dcim.site', 3);
        return marked.transactionId;
      });
      await expect(
        app.transaction(async (trx) => {
          await app.mark(trx, 'dcim.site', 4);
          throw new Error('rolled back');
        }),
      ).rejects.toThrow('rolled back');

      const calls = sqs.commandCalls(SendMessageCommand);
      expect(calls).toHaveLength(1);
      expect(calls[0]?.args[0].input.QueueUrl).toBe(queueUrl);
      const body = JSON.parse(calls[0]?.args[0].input.MessageBody ?? '{}');
      expect(body).toMatchObject({ kind: NUDGE_KIND, version: 1, schemas: ['public'], objects: 3, transactionIds: [transactionId] });
      expect(await countOutbox(database.db)).toBe(3);
    } finally {
      sqs.restore();
    }
  });

  test('a failed send is counted, not thrown', async () => {
    const sqs = mockClient(SQSClient);
    sqs.on(SendMessageCommand).rejects(new Error('queue unreachable'));
    try {
      const app = createSearchOutbox({
        db: database.db,
        indexes: FIXTURE_INDEXES,
        dispatcher: createSqsDispatcher({
          queueUrl: 'https://sqs.us-east-1.amazonaws.com/000000000000/drainer',
          client: new SQSClient({ region: 'us-east-1' }),
        }),
      });
      const result = await app.transaction(async (trx) => {
        await app.mark(trx, 'dcim.site', 1);
        return 'committed';
      });

      expect(result).toBe('committed');
      expect(app.stats).toEqual({ dispatched: 0, dispatchFailures: 1 });
      expect(await countOutbox(database.db)).toBe(1);
    } finally {
      sqs.restore();
    }
  });

  test('rejects a queue URL that is no URL', () => {
    expect(() => createSqsDispatcher({ queueUrl: 'drainer' })).toThrow(/Invalid queueUrl: "drainer" is not a valid URL/);
  });

  test.each([0, 1.5, 300_001, '5000'])('rejects the send timeout %s', (sendTimeoutMs) => {
    expect(() =>
      createSqsDispatcher({ queueUrl: 'http://127.0.0.1:1/000000000000/drainer', sendTimeoutMs: sendTimeoutMs as number }),
    ).toThrow(/Invalid sendTimeoutMs: .* must be an integer of milliseconds from 1 to 300000/);
  });
});

