import { ReceiveMessageCommand, SendMessageCommand, type SQSClient } from '@aws-sdk/client-sqs';
import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import {
  createDrainerHandlers,
  createLambdaContext,
  createScheduledEvent,
  createSqsDispatcher,
  ForwardingLogger,
  ForwardingMetrics,
  parseNudge,
  pollOnce,
  startLocalSqs,
  type BatchOutcome,
  type DrainerHandlers,
  type LocalSqs,
  type PublishedMetrics,
  type SqsHandler,
} from '@search-outbox/lambda';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites, readCache } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';

/** Receives of a message before the local SQS server moves it to the dead-letter queue. */
const MAX_RECEIVE_COUNT = 2;

let database: TestDatabase;
let sqs: LocalSqs | undefined;
let logLines: LogLine[];
let published: PublishedMetrics[];
let handlers: DrainerHandlers;

beforeAll(async () => {
  database = await createTestDatabase('queue_loop');
  const migrator = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
  await migrator.migrate();
  await createFixtureTables(database.db);

  logLines = [];
  published = [];
  handlers = createDrainerHandlers({
    indexes: FIXTURE_INDEXES,
    environment: { DATABASE_URL: database.url, DB_SSL: 'disable' },
    // The test's pool, so that the handlers see the same database; the test closes it.
    database: { db: database.db, setSecret() {}, close: async () => {} },
    logger: new ForwardingLogger(capturingLogger(logLines), { logLevel: 'DEBUG' }),
    metrics: new ForwardingMetrics({ onPublish: (metrics) => published.push(metrics) }),
  });
});

afterAll(async () => {
  await database?.destroy();
});

beforeEach(async () => {
  logLines.length = 0;
  published.length = 0;
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site, region, virtual_chassis`.execute(database.db);
  sqs = await startLocalSqs({
    queueName: 'queue-loop',
    maxReceiveCount: MAX_RECEIVE_COUNT,
    visibilityTimeoutSeconds: 1,
  });
});

afterEach(async () => {
  await sqs?.stop();
  sqs = undefined;
});

function localSqs(): LocalSqs {
  if (sqs === undefined) throw new Error('the local SQS server is not running');
  return sqs;
}

function applicationOutbox(client: SQSClient, queueUrl: string): SearchOutbox {
  return createSearchOutbox({
    db: database.db,
    indexes: FIXTURE_INDEXES,
    dispatcher: createSqsDispatcher({ queueUrl, client }),
  });
}

async function commitSite(outbox: SearchOutbox, id: number, name: string): Promise<void> {
  await outbox.transaction(async (trx) => {
    await insertSites(trx, [fullSite(id, name)]);
    await outbox.mark(trx, 'dcim.site', id);
  });
}

/** Visible, in-flight and delayed messages of a queue of the local server. */
async function messagesInQueue(queueUrl: string): Promise<number> {
  const counts = await localSqs().messageCounts(queueUrl);
  return counts.visible + counts.inFlight + counts.delayed;
}

/** Polls like the event source mapping until `done` holds, at most `maxPolls` times. */
async function pollUntil(done: (outcomes: BatchOutcome[]) => boolean | Promise<boolean>, maxPolls: number): Promise<BatchOutcome[]> {
  const server = localSqs();
  const outcomes: BatchOutcome[] = [];
  for (let poll = 0; poll < maxPolls && !(await done(outcomes)); poll += 1) {
    const outcome = await pollOnce({
      client: server.client,
      queueUrl: server.queueUrl,
      handler: handlers.sqs,
      waitTimeSeconds: 2,
      functionTimeoutMs: 30_000,
    });
    if (outcome !== undefined) outcomes.push(outcome);
  }
  return outcomes;
}

describe('local queue loop', () => {
  test('commits send one message each and the poller drains them', async () => {
    const server = localSqs();
    const outbox = applicationOutbox(server.client, server.queueUrl);
    await commitSite(outbox, 1, 'Alpha');
    await commitSite(outbox, 2, 'Bravo');
    await expect(
      outbox.transaction(async (trx) => {
        await insertSites(trx, [fullSite(3, 'Charlie')]);
        await outbox.mark(trx, 'dcim.site', 3);
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    await commitSite(outbox, 4, 'Delta');

    expect(outbox.stats).toEqual({ dispatched: 3, dispatchFailures: 0 });
    expect(await messagesInQueue(server.queueUrl)).toBe(3);

    const outcomes = await pollUntil((done) => done.flatMap((outcome) => outcome.received).length >= 3, 10);
    const records = outcomes.flatMap((outcome) => outcome.event.Records);
    expect(records).toHaveLength(3);
    expect(outcomes.flatMap((outcome) => outcome.deleted)).toHaveLength(3);
    expect(outcomes.flatMap((outcome) => outcome.failed)).toEqual([]);
    for (const record of records) {
      expect(record.eventSource).toBe('aws:sqs');
      expect(record.eventSourceARN).toBe(server.queueArn);
      expect(record.awsRegion).toBe('us-east-1');
      expect(record.attributes.ApproximateReceiveCount).toBe('1');
      expect(Number(record.attributes.SentTimestamp)).toBeGreaterThan(0);
      expect(record.md5OfBody).toMatch(/^[0-9a-f]{32}$/);
      const nudge = parseNudge(record.body);
      expect(nudge.objects).toBe(1);
      expect(nudge.schemas).toEqual(['public']);
    }

    expect(await countOutbox(database.db)).toBe(0);
    expect(await messagesInQueue(server.queueUrl)).toBe(0);
    const cache = await readCache(database.db);
    expect(cache).toContain('dcim.site|1|name|str|Alpha|100');
    expect(cache).toContain('dcim.site|4|name|str|Delta|100');
    expect(cache.some((line) => line.includes('Charlie'))).toBe(false);
    const results = await outbox.search({ query: 'bravo' });
    expect(results.map((result) => result.objectId)).toEqual(['2']);
    expect(published.some((metrics) => metrics.values.Rebuilt === 3)).toBe(true);
  });

  test('failing drain sends the message to the DLQ', async () => {
    const server = localSqs();
    const outbox = applicationOutbox(server.client, server.queueUrl);
    await commitSite(outbox, 1, 'Alpha');
    // Every drain now fails on its first statement, so the handler reports the whole batch failed.
    await sql`ALTER TABLE search_outbox.outbox RENAME TO outbox_hidden`.execute(database.db);
    let outcomes: BatchOutcome[];
    try {
      outcomes = await pollUntil(async () => (await messagesInQueue(server.deadLetterQueueUrl)) > 0, 10);
    } finally {
      await sql`ALTER TABLE search_outbox.outbox_hidden RENAME TO outbox`.execute(database.db);
    }

    expect(outcomes).toHaveLength(MAX_RECEIVE_COUNT);
    expect(outcomes.map((outcome) => outcome.event.Records[0]?.attributes.ApproximateReceiveCount)).toEqual(['1', '2']);
    for (const outcome of outcomes) {
      expect(outcome.deleted).toEqual([]);
      expect(outcome.failed).toEqual(outcome.received);
      expect(outcome.response?.batchItemFailures).toEqual([{ itemIdentifier: outcome.received[0] }]);
    }
    expect(logLines.some((line) => line.level === 'error' && line.message.startsWith('drain failed'))).toBe(true);

    const dead = await server.client.send(
      new ReceiveMessageCommand({ QueueUrl: server.deadLetterQueueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }),
    );
    expect(dead.Messages?.map((message) => message.MessageId)).toEqual([outcomes[0]?.received[0]]);
    expect(parseNudge(dead.Messages?.[0]?.Body).objects).toBe(1);
    expect(await messagesInQueue(server.queueUrl)).toBe(0);
    expect(await countOutbox(database.db, 'pending')).toBe(1);
  });

  test('commit succeeds with the SQS server stopped', async () => {
    const server = localSqs();
    const outbox = applicationOutbox(server.client, server.queueUrl);
    await server.stop();

    await commitSite(outbox, 1, 'Alpha');
    await commitSite(outbox, 2, 'Bravo');

    expect(outbox.stats).toEqual({ dispatched: 0, dispatchFailures: 2 });
    expect(await countOutbox(database.db, 'pending')).toBe(2);
    expect(await readCache(database.db)).toEqual([]);

    const sweep = await handlers.schedule(
      createScheduledEvent(),
      createLambdaContext({ functionName: 'sweep', timeoutMs: 30_000 }),
    );
    expect(sweep.drain.rebuilt).toBe(2);
    expect(sweep.status.pending).toBe(0);
    expect(await countOutbox(database.db)).toBe(0);
    expect(await readCache(database.db)).toContain('dcim.site|2|name|str|Bravo|100');
    expect(published.some((metrics) => metrics.values.PendingRows === 0 && metrics.values.Rebuilt === 2)).toBe(true);
  });
});

describe('poller', () => {
  async function sendMessages(bodies: readonly string[]): Promise<void> {
    const server = localSqs();
    for (const body of bodies) {
      await server.client.send(new SendMessageCommand({ QueueUrl: server.queueUrl, MessageBody: body }));
    }
  }

  async function pollWith(handler: SqsHandler): Promise<BatchOutcome | undefined> {
    const server = localSqs();
    return pollOnce({ client: server.client, queueUrl: server.queueUrl, handler, waitTimeSeconds: 2, batchSize: 10 });
  }

  test('handler that throws deletes nothing', async () => {
    await sendMessages(['one', 'two']);
    const outcome = await pollWith(async () => {
      throw 'not an Error';
    });

    expect(outcome?.received).toHaveLength(2);
    expect(outcome?.deleted).toEqual([]);
    expect(outcome?.error).toBe('not an Error');
    expect(await messagesInQueue(localSqs().queueUrl)).toBe(2);

    const again = await pollWith(async () => ({ batchItemFailures: [] }));
    expect(again?.event.Records.map((record) => record.attributes.ApproximateReceiveCount)).toEqual(['2', '2']);
    expect(again?.deleted).toHaveLength(2);
    expect(await messagesInQueue(localSqs().queueUrl)).toBe(0);
  });

  test('reported failures stay on the queue', async () => {
    await sendMessages(['keep', 'delete']);
    const outcome = await pollWith(async (event) => ({
      batchItemFailures: event.Records.filter((record) => record.body === 'keep').map((record) => ({
        itemIdentifier: record.messageId,
      })),
    }));

    expect(outcome?.deleted).toHaveLength(1);
    expect(outcome?.failed).toHaveLength(1);
    expect(await messagesInQueue(localSqs().queueUrl)).toBe(1);
  });

  test('unknown itemIdentifier fails the whole batch', async () => {
    await sendMessages(['one', 'two']);
    const outcome = await pollWith(async () => ({ batchItemFailures: [{ itemIdentifier: 'not-in-the-batch' }] }));

    expect(outcome?.deleted).toEqual([]);
    expect(outcome?.failed).toHaveLength(2);
    expect(await messagesInQueue(localSqs().queueUrl)).toBe(2);
  });

  test('context counts down from the function timeout', async () => {
    await sendMessages(['one']);
    let remaining: number | undefined;
    let functionName: string | undefined;
    await pollOnce({
      client: localSqs().client,
      queueUrl: localSqs().queueUrl,
      waitTimeSeconds: 2,
      functionTimeoutMs: 5_000,
      functionName: 'local-drainer',
      handler: async (_event, context) => {
        remaining = context.getRemainingTimeInMillis();
        functionName = context.functionName;
      },
    });

    expect(remaining).toBeGreaterThan(0);
    expect(remaining).toBeLessThanOrEqual(5_000);
    expect(functionName).toBe('local-drainer');
  });
});
