import net, { type AddressInfo, type Socket } from 'node:net';
import { ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { createSearchOutbox, type SearchOutbox } from '@search-outbox/core';
import {
  createDrainerHandlers,
  createLambdaContext,
  createScheduledEvent,
  createSqsDispatcher,
  ForwardingLogger,
  ForwardingMetrics,
  LOCAL_SQS_REGION,
  parseNudge,
  pollOnce,
  pollQueue,
  startLocalSqs,
  type BatchOutcome,
  type DrainerHandlers,
  type LocalSqs,
  type SqsHandler,
  type SweepResult,
} from '@search-outbox/lambda';
import type { Context } from 'aws-lambda';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { countOutbox, createFixtureTables, FIXTURE_INDEXES, fullSite, insertSites } from '../support/fixtures.js';
import { capturingLogger, type LogLine } from '../support/logger.js';
import { expectedCacheLines, readSortedCache } from '../support/oracle.js';

/**
 * Faults on the queue path and at the Lambda deadline: the SQS server goes
 * away while the application sends nudges and while the local poller
 * receives, and a drain reaches the function's deadline between batches and
 * inside one. After each fault no committed change may be lost. One
 * scheduled sweep must leave the cache equal to a rebuild from the source
 * tables (the oracle), with no duplicate cache row and no pending or failed
 * outbox row. A log line must describe what happened.
 */

/** Dummy credentials that only servers on 127.0.0.1 see. The tests check that no log line contains them. */
const DUMMY_CREDENTIALS = { accessKeyId: 'AKIAFAULTTESTDUMMYKEY', secretAccessKey: 'faults-test-dummy-secret-access-key' };

let database: TestDatabase;
let logLines: LogLine[];
/** The healthy SQS server of each test, with the drainer's queue for follow-up nudges. */
let sqs: LocalSqs | undefined;
/** Functions that stop the pollers, relays, clients and servers of a test, run after it in reverse order. */
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  database = await createTestDatabase('lambda_faults');
  await createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' }).migrate();
  await createFixtureTables(database.db);
  // slowDownCacheWrites puts this function on the cache as a statement
  // trigger. Every drain batch then takes at least 50 ms, so that a backlog
  // is sure to outlast a short deadline.
  await sql`
    CREATE FUNCTION slow_cache_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_sleep(0.05);
      RETURN NULL;
    END
    $$;
  `.execute(database.db);
});

afterAll(async () => {
  await database?.destroy();
});

beforeEach(async () => {
  logLines = [];
  await sql`TRUNCATE search_outbox.outbox, search_cache, device, site`.execute(database.db);
  const server = await startLocalSqs({ queueName: 'faults', visibilityTimeoutSeconds: 1 });
  sqs = server;
  cleanups.push(() => server.stop());
});

afterEach(async () => {
  const errors: unknown[] = [];
  while (cleanups.length > 0) {
    try {
      await cleanups.pop()?.();
    } catch (error) {
      errors.push(error);
    }
  }
  sqs = undefined;
  await sql`DROP TRIGGER IF EXISTS slow_cache_write ON search_cache`.execute(database.db);
  if (errors.length > 0) throw errors[0];
});

function localSqs(): LocalSqs {
  if (sqs === undefined) throw new Error('the local SQS server is not running');
  return sqs;
}

/** Creates an SQS client for a server on 127.0.0.1, with dummy credentials and an explicit region. */
function sqsClientFor(endpoint: string): SQSClient {
  if (new URL(endpoint).hostname !== '127.0.0.1') throw new Error(`refusing a non-local SQS endpoint: ${endpoint}`);
  const client = new SQSClient({
    endpoint,
    region: LOCAL_SQS_REGION,
    credentials: DUMMY_CREDENTIALS,
    // Queue URLs use fauxqs's host name scheme, but requests must go to `endpoint`.
    useQueueUrlAsEndpoint: false,
  });
  cleanups.push(() => client.destroy());
  return client;
}

/** Creates the drainer's handlers on the test database, with follow-up nudges to the healthy server's queue. */
function drainerHandlers(settings: Readonly<Record<string, string>> = {}): DrainerHandlers {
  const server = localSqs();
  return createDrainerHandlers({
    indexes: FIXTURE_INDEXES,
    environment: {
      DATABASE_URL: database.url,
      DB_SSL: 'disable',
      SEARCH_OUTBOX_QUEUE_URL: server.queueUrl,
      ...settings,
    },
    // The test's pool, so that the handlers see the same database. The test closes it.
    database: { db: database.db, setSecret() {}, close: async () => {} },
    logger: new ForwardingLogger(capturingLogger(logLines), { logLevel: 'DEBUG' }),
    metrics: new ForwardingMetrics({ onPublish: () => {} }),
    sqsClient: sqsClientFor(server.endpoint),
  });
}

function applicationOutbox(queueUrl: string, client: SQSClient, sendTimeoutMs?: number): SearchOutbox {
  return createSearchOutbox({
    db: database.db,
    indexes: FIXTURE_INDEXES,
    logger: capturingLogger(logLines),
    dispatcher: createSqsDispatcher({ queueUrl, client, ...(sendTimeoutMs === undefined ? {} : { sendTimeoutMs }) }),
  });
}

async function commitSite(outbox: SearchOutbox, id: number, name: string): Promise<void> {
  await outbox.transaction(async (trx) => {
    await insertSites(trx, [fullSite(id, name)]);
    await outbox.mark(trx, 'dcim.site', id);
  });
}

/** Inserts sites 1..count and marks them in one transaction of `outbox`. */
async function commitSites(outbox: SearchOutbox, count: number, prefix: string): Promise<void> {
  const sites = Array.from({ length: count }, (_, position) => fullSite(position + 1, `${prefix} ${position + 1}`));
  await outbox.transaction(async (trx) => {
    await insertSites(trx, sites);
    await outbox.mark(
      trx,
      'dcim.site',
      sites.map((site) => site.id),
    );
  });
}

/** Renames sites 1..count and marks them in one transaction of `outbox`. */
async function renameSites(outbox: SearchOutbox, count: number, prefix: string): Promise<void> {
  const ids = Array.from({ length: count }, (_, position) => position + 1);
  await outbox.transaction(async (trx) => {
    await sql`UPDATE site SET name = ${prefix} || ' ' || id WHERE id = ANY(${ids}::bigint[])`.execute(trx);
    await outbox.mark(trx, 'dcim.site', ids);
  });
}

function lambdaContext(timeoutMs: number, functionName = 'faults-drainer'): Context {
  return createLambdaContext({ functionName, timeoutMs });
}

async function sweep(handlers: DrainerHandlers, timeoutMs = 60_000): Promise<SweepResult> {
  return handlers.schedule(createScheduledEvent(), lambdaContext(timeoutMs, 'faults-sweep'));
}

/** Runs one scheduled sweep and checks that it leaves nothing behind and the cache equals the oracle. */
async function expectOneSweepRecovers(handlers: DrainerHandlers): Promise<void> {
  const result = await sweep(handlers);

  expect(result.drain.stoppedBy).toBe('empty');
  expect(result.status.pending).toBe(0);
  expect(result.status.failed).toBe(0);
  expect(result.status.dead).toBe(0);
  expect(await countOutbox(database.db)).toBe(0);
  const cache = await readSortedCache(database.db);
  expect(new Set(cache).size).toBe(cache.length);
  expect(cache).toEqual(await expectedCacheLines(database.db));
}

/** Ids of the sites with a pending outbox row. */
async function pendingSiteIds(): Promise<Set<string>> {
  const result = await sql<{ object_id: string }>`
    SELECT DISTINCT object_id FROM search_outbox.outbox WHERE state = 'pending' AND object_type = 'dcim.site'
  `.execute(database.db);
  return new Set(result.rows.map((row) => row.object_id));
}

function objectIdOf(cacheLine: string): string {
  return cacheLine.split('|')[1] ?? '';
}

/** Oracle lines of the drained objects followed by `before` lines of the pending ones, sorted like `readSortedCache`. */
async function expectedPartialCache(before: readonly string[], pending: ReadonlySet<string>): Promise<string[]> {
  const drained = (await expectedCacheLines(database.db)).filter((line) => !pending.has(objectIdOf(line)));
  const untouched = before.filter((line) => pending.has(objectIdOf(line)));
  return [...drained, ...untouched].sort();
}

function linesWithMessage(level: string, fragment: string): LogLine[] {
  return logLines.filter((line) => line.level === level && line.message.includes(fragment));
}

function expectNoCredentialLogged(): void {
  const text = JSON.stringify(logLines);
  expect(text).not.toContain(DUMMY_CREDENTIALS.accessKeyId);
  expect(text).not.toContain(DUMMY_CREDENTIALS.secretAccessKey);
}

/** Polls `condition` every 20 ms until it holds, and fails naming `description` after `maxMs`. */
async function waitFor(condition: () => boolean | Promise<boolean>, description: string, maxMs = 20_000): Promise<void> {
  const giveUpAt = Date.now() + maxMs;
  while (!(await condition())) {
    if (Date.now() > giveUpAt) throw new Error(`gave up waiting for ${description}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Receives the messages on the healthy server's queue, waiting up to `waitTimeSeconds` for the first. */
async function receiveNudges(waitTimeSeconds: number): Promise<ReturnType<typeof parseNudge>[]> {
  const server = localSqs();
  const received = await server.client.send(
    new ReceiveMessageCommand({ QueueUrl: server.queueUrl, MaxNumberOfMessages: 10, WaitTimeSeconds: waitTimeSeconds }),
  );
  return (received.Messages ?? []).map((message) => parseNudge(message.Body));
}

/**
 * A TCP server on 127.0.0.1 in front of a local SQS server. Stopping it
 * closes every connection mid-request and refuses new ones, which is what
 * clients see when the SQS server goes away. Starting it again puts a server
 * back at the same address, and the queue behind it keeps its messages. With
 * no upstream it reads requests and never responds.
 */
class SqsRelay {
  readonly #upstreamPort: number | undefined;
  readonly #connections = new Map<Socket, { awaitingResponse: string | undefined; upstream: Socket | undefined }>();
  #server: net.Server | undefined;
  #port = 0;
  /** X-Amz-Target of every request received, such as `AmazonSQS.ReceiveMessage`. */
  readonly requests: string[] = [];

  constructor(upstreamPort: number | undefined) {
    this.#upstreamPort = upstreamPort;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  /** Listens on 127.0.0.1, on the port of the previous start if there was one. */
  async start(): Promise<void> {
    const server = net.createServer((socket) => this.#accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#port, '127.0.0.1', () => resolve());
    });
    this.#port = (server.address() as AddressInfo).port;
    this.#server = server;
  }

  /** Stops listening and closes every connection. Returns the X-Amz-Target of each request that had no response. */
  async stop(): Promise<string[]> {
    const awaiting = this.requestsAwaitingResponse();
    const server = this.#server;
    this.#server = undefined;
    for (const [socket, connection] of this.#connections) {
      socket.destroy();
      connection.upstream?.destroy();
    }
    this.#connections.clear();
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
    return awaiting;
  }

  /** X-Amz-Target of each request relayed that has no response yet. */
  requestsAwaitingResponse(): string[] {
    return [...this.#connections.values()]
      .map((connection) => connection.awaitingResponse)
      .filter((target): target is string => target !== undefined);
  }

  #accept(socket: Socket): void {
    const connection: { awaitingResponse: string | undefined; upstream: Socket | undefined } = {
      awaitingResponse: undefined,
      upstream: undefined,
    };
    this.#connections.set(socket, connection);
    const close = (): void => {
      socket.destroy();
      connection.upstream?.destroy();
      this.#connections.delete(socket);
    };
    socket.on('error', close);
    socket.on('close', close);
    socket.on('data', (chunk: Buffer) => {
      const target = /x-amz-target:\s*([^\r\n]+)/i.exec(chunk.toString('latin1'))?.[1]?.trim();
      if (target !== undefined) {
        this.requests.push(target);
        connection.awaitingResponse = target;
      }
      connection.upstream?.write(chunk);
    });
    if (this.#upstreamPort === undefined) return;

    const upstream = net.connect(this.#upstreamPort, '127.0.0.1');
    connection.upstream = upstream;
    socket.pause();
    upstream.on('connect', () => socket.resume());
    upstream.on('data', (chunk: Buffer) => {
      connection.awaitingResponse = undefined;
      socket.write(chunk);
    });
    upstream.on('error', close);
    upstream.on('close', close);
  }
}

async function startRelay(upstreamPort: number | undefined): Promise<SqsRelay> {
  const relay = new SqsRelay(upstreamPort);
  await relay.start();
  cleanups.push(() => relay.stop());
  return relay;
}

/**
 * Holds an ACCESS EXCLUSIVE lock on the site table in a transaction of its
 * own, so that a drain batch blocks when it reads the sites to rebuild their
 * cache rows. The drain deletes an object's old cache rows before it reads
 * the source rows, so the blocked batch has already changed the cache inside
 * its transaction.
 */
async function lockSiteTable(): Promise<{ release(): Promise<void> }> {
  let release = (): void => {};
  const released = new Promise<void>((resolve) => (release = resolve));
  let locked = (): void => {};
  const lockTaken = new Promise<void>((resolve) => (locked = resolve));
  const holder = database.db.transaction().execute(async (trx) => {
    await sql`LOCK TABLE site IN ACCESS EXCLUSIVE MODE`.execute(trx);
    locked();
    await released;
  });
  cleanups.push(async () => {
    release();
    await holder;
  });
  await Promise.race([lockTaken, holder]);
  return {
    release: async () => {
      release();
      await holder;
    },
  };
}

/** Process ids of the backends of the test database that wait for a lock. */
async function backendsWaitingForLock(): Promise<number[]> {
  const result = await sql<{ pid: number }>`
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()
  `.execute(database.db);
  return result.rows.map((row) => row.pid);
}

/** Makes every statement that writes the cache take at least 50 ms, until the test ends. */
async function slowDownCacheWrites(): Promise<void> {
  await sql`
    CREATE TRIGGER slow_cache_write AFTER INSERT ON search_cache
    FOR EACH STATEMENT EXECUTE FUNCTION slow_cache_write()
  `.execute(database.db);
}

async function restoreCacheWriteSpeed(): Promise<void> {
  await sql`DROP TRIGGER slow_cache_write ON search_cache`.execute(database.db);
}

describe('SQS server stopped during dispatch', () => {
  /** Concurrent transactions in the dispatch tests. */
  const COMMITS = 24;
  /** The SendMessage call that stops the server. */
  const STOPPING_SEND = 6;

  test('commits succeed and one sweep drains', async () => {
    const dispatchServer = await startLocalSqs({ queueName: 'dispatch-stopped' });
    cleanups.push(() => dispatchServer.stop());
    const client = sqsClientFor(dispatchServer.endpoint);
    // The STOPPING_SEND-th call stops the server before its request goes
    // out, while the sends of the other transactions are being made. It
    // and every later call wait for the stop, so at least
    // COMMITS - STOPPING_SEND + 1 sends fail.
    let sends = 0;
    let stopping: Promise<void> | undefined;
    client.middlewareStack.add(
      (next) => async (args) => {
        sends += 1;
        if (sends === STOPPING_SEND) stopping = dispatchServer.stop();
        if (stopping !== undefined) await stopping;
        return next(args);
      },
      { step: 'initialize', name: 'stopServerDuringDispatch' },
    );
    const outbox = applicationOutbox(dispatchServer.queueUrl, client);

    const commits = Array.from({ length: COMMITS }, (_, position) => commitSite(outbox, position + 1, `Dispatch ${position + 1}`));
    await Promise.all(commits);

    expect(stopping).toBeDefined();
    const { dispatched, dispatchFailures } = outbox.stats;
    expect(dispatched + dispatchFailures).toBe(COMMITS);
    expect(dispatchFailures).toBeGreaterThanOrEqual(COMMITS - STOPPING_SEND + 1);
    expect(await countOutbox(database.db, 'pending')).toBe(COMMITS);

    const failures = linesWithMessage('error', 'dispatch after commit failed');
    expect(failures).toHaveLength(dispatchFailures);
    for (const line of failures) {
      expect(String(line.attributes?.error)).toContain(`SendMessage to ${dispatchServer.queueUrl} failed`);
    }
    expectNoCredentialLogged();

    await expectOneSweepRecovers(drainerHandlers());
  });

  test('closed connections fail every send', async () => {
    const silent = await startRelay(undefined);
    const queueUrl = `${silent.endpoint}/000000000000/dispatch-closed`;
    // A long send timeout, so that only the closed connections end the sends.
    const outbox = applicationOutbox(queueUrl, sqsClientFor(silent.endpoint), 60_000);

    const commits = Array.from({ length: 5 }, (_, position) => commitSite(outbox, position + 1, `Closed ${position + 1}`));
    await waitFor(() => silent.requestsAwaitingResponse().length === 5, 'five SendMessage requests without a response');
    const awaiting = await silent.stop();
    await Promise.all(commits);

    expect(awaiting).toEqual(Array(5).fill('AmazonSQS.SendMessage'));
    expect(outbox.stats).toEqual({ dispatched: 0, dispatchFailures: 5 });
    expect(await countOutbox(database.db, 'pending')).toBe(5);
    const failures = linesWithMessage('error', 'dispatch after commit failed');
    expect(failures).toHaveLength(5);
    for (const line of failures) {
      expect(String(line.attributes?.error)).toContain(`SendMessage to ${queueUrl} failed`);
    }
    expectNoCredentialLogged();

    await expectOneSweepRecovers(drainerHandlers());
  });

  test('sends to a silent server time out', { timeout: 30_000 }, async () => {
    const silent = await startRelay(undefined);
    const queueUrl = `${silent.endpoint}/000000000000/dispatch-silent`;
    const outbox = applicationOutbox(queueUrl, sqsClientFor(silent.endpoint), 200);

    await Promise.all([commitSite(outbox, 1, 'Unanswered 1'), commitSite(outbox, 2, 'Unanswered 2')]);

    expect(silent.requests).toEqual(['AmazonSQS.SendMessage', 'AmazonSQS.SendMessage']);
    expect(outbox.stats).toEqual({ dispatched: 0, dispatchFailures: 2 });
    const failures = linesWithMessage('error', 'dispatch after commit failed');
    expect(failures).toHaveLength(2);
    for (const line of failures) {
      expect(line.attributes?.error).toBe(`SendMessage to ${queueUrl} timed out after 200 ms`);
    }
    expectNoCredentialLogged();

    await expectOneSweepRecovers(drainerHandlers());
  });
});

describe('SQS server stopped during receive', () => {
  interface RunningPoller {
    readonly outcomes: BatchOutcome[];
    stop(): Promise<void>;
  }

  /** Starts pollQueue through `relay`. `handler` defaults to the drainer's SQS handler. */
  function startPoller(relay: SqsRelay, handlers: DrainerHandlers, handler: SqsHandler = handlers.sqs): RunningPoller {
    const server = localSqs();
    const outcomes: BatchOutcome[] = [];
    const controller = new AbortController();
    const running = pollQueue({
      client: sqsClientFor(relay.endpoint),
      queueUrl: server.queueUrl,
      queueArn: server.queueArn,
      handler,
      signal: controller.signal,
      // Long enough that the call is still in flight when the test stops the server.
      waitTimeSeconds: 10,
      functionTimeoutMs: 30_000,
      errorBackoffMs: 50,
      logger: capturingLogger(logLines),
      onBatch: (outcome) => outcomes.push(outcome),
    });
    const stop = async (): Promise<void> => {
      controller.abort();
      await running;
    };
    cleanups.push(stop);
    return { outcomes, stop };
  }

  function deletedIds(outcomes: readonly BatchOutcome[]): string[] {
    return outcomes.flatMap((outcome) => outcome.deleted);
  }

  test('poller resumes after a restart', async () => {
    const server = localSqs();
    const relay = await startRelay(server.port);
    const handlers = drainerHandlers();
    const poller = startPoller(relay, handlers);
    const outbox = applicationOutbox(server.queueUrl, sqsClientFor(server.endpoint));

    await commitSite(outbox, 1, 'Before Outage');
    await waitFor(() => deletedIds(poller.outcomes).length === 1, 'the first nudge to be drained');
    await waitFor(() => relay.requestsAwaitingResponse().includes('AmazonSQS.ReceiveMessage'), 'a long poll in flight');
    const awaiting = await relay.stop();
    await waitFor(() => linesWithMessage('warn', 'polling the queue failed').length >= 2, 'two failed polls');

    // The application keeps committing, and its nudges reach the queue directly.
    await commitSite(outbox, 2, 'During Outage');
    await commitSite(outbox, 3, 'During Outage Too');
    await relay.start();
    await waitFor(() => deletedIds(poller.outcomes).length === 3, 'the nudges sent during the outage to be drained');
    await poller.stop();

    expect(awaiting).toEqual(['AmazonSQS.ReceiveMessage']);
    expect(outbox.stats).toEqual({ dispatched: 3, dispatchFailures: 0 });
    const failures = linesWithMessage('warn', 'polling the queue failed');
    for (const line of failures) {
      expect(line.attributes?.queueUrl).toBe(server.queueUrl);
      expect(String(line.attributes?.error)).toMatch(/^ReceiveMessage failed: /);
    }
    expect(failures.map((line) => line.attributes?.consecutiveFailures)).toEqual(
      failures.map((_, position) => position + 1),
    );
    const recovered = linesWithMessage('info', 'polling the queue works again');
    expect(recovered.map((line) => line.attributes?.failedAttempts)).toEqual([failures.length]);
    expect(linesWithMessage('info', 'poller stopped')).toHaveLength(1);
    expect(poller.outcomes.flatMap((outcome) => outcome.failed)).toEqual([]);
    expectNoCredentialLogged();

    await expectOneSweepRecovers(handlers);
  });

  test('undeleted message is drained again', async () => {
    const server = localSqs();
    const relay = await startRelay(server.port);
    const handlers = drainerHandlers();
    let invocations = 0;
    // The server goes away after the first drain and before its delete.
    const poller = startPoller(relay, handlers, async (event, context) => {
      const response = await handlers.sqs(event, context);
      invocations += 1;
      if (invocations === 1) await relay.stop();
      return response;
    });
    const outbox = applicationOutbox(server.queueUrl, sqsClientFor(server.endpoint));

    await commitSite(outbox, 1, 'Alpha');
    await waitFor(() => linesWithMessage('warn', 'deleting processed messages failed').length === 1, 'the failed delete');
    // A change marked without a nudge is drained only because the message comes back.
    const quiet = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    await quiet.transaction(async (trx) => {
      await sql`UPDATE site SET name = 'Alpha Renamed' WHERE id = 1`.execute(trx);
      await quiet.mark(trx, 'dcim.site', 1);
    });
    await relay.start();
    await waitFor(() => deletedIds(poller.outcomes).length === 1, 'the message to be received again and deleted');
    await poller.stop();

    const [first, second] = poller.outcomes;
    const messageId = first?.received[0];
    expect(poller.outcomes).toHaveLength(2);
    expect(first?.received).toHaveLength(1);
    expect(first?.deleted).toEqual([]);
    expect(first?.undeleted).toEqual([messageId]);
    expect(first?.deleteError).toMatch(/^DeleteMessageBatch failed: /);
    expect(second?.received).toEqual([messageId]);
    expect(second?.event.Records[0]?.attributes.ApproximateReceiveCount).toBe('2');
    expect(second?.deleted).toEqual([messageId]);
    expect(await server.messageCounts()).toEqual({ visible: 0, inFlight: 0, delayed: 0 });

    const deleteFailures = linesWithMessage('warn', 'deleting processed messages failed');
    expect(deleteFailures[0]?.attributes).toMatchObject({ queueUrl: server.queueUrl, messageIds: [messageId] });
    expect(deleteFailures[0]?.message).toContain('received again after the visibility timeout');
    expectNoCredentialLogged();

    const cache = await readSortedCache(database.db);
    expect(cache).toContain('dcim.site|1|name|str|Alpha Renamed|100');
    expect(cache.filter((line) => line.startsWith('dcim.site|1|name|'))).toHaveLength(1);
    await expectOneSweepRecovers(handlers);
  });
});

describe('Lambda deadline mid-drain', () => {
  /** Time the handlers keep free before the function's deadline, in milliseconds. */
  const MARGIN_MS = 1_000;
  /** Time each invocation has for drain batches, in milliseconds. */
  const DRAIN_WINDOW_MS = 400;
  const BACKLOG = 300;
  const BATCH_SIZE = 10;
  const settings = { SEARCH_OUTBOX_BATCH_SIZE: String(BATCH_SIZE), SEARCH_OUTBOX_DEADLINE_MARGIN_MS: String(MARGIN_MS) };

  test('SQS handler stops and nudges', async () => {
    const server = localSqs();
    const client = sqsClientFor(server.endpoint);
    const handlers = drainerHandlers(settings);
    await commitSites(applicationOutbox(server.queueUrl, client), BACKLOG, 'Backlog');
    await slowDownCacheWrites();

    const pollOptions = { client, queueUrl: server.queueUrl, queueArn: server.queueArn, handler: handlers.sqs, waitTimeSeconds: 2 };
    const first = await pollOnce({ ...pollOptions, functionTimeoutMs: MARGIN_MS + DRAIN_WINDOW_MS });

    expect(first?.deleted).toHaveLength(1);
    const pending = await pendingSiteIds();
    expect(pending.size).toBeGreaterThan(0);
    expect(pending.size).toBeLessThan(BACKLOG);
    expect(await countOutbox(database.db, 'pending')).toBe(pending.size);
    expect(await readSortedCache(database.db)).toEqual(await expectedPartialCache([], pending));
    const stopped = linesWithMessage('info', 'drain stopped at the deadline with rows left; sent a follow-up nudge');
    expect(stopped.map((line) => line.attributes?.remaining)).toEqual([pending.size]);
    expect(stopped[0]?.attributes?.queueUrl).toBe(server.queueUrl);

    await restoreCacheWriteSpeed();
    const second = await pollOnce({ ...pollOptions, functionTimeoutMs: 30_000 });

    expect(second?.received).toHaveLength(1);
    expect(parseNudge(second?.event.Records[0]?.body).objects).toBe(pending.size);
    expect(second?.deleted).toEqual(second?.received);
    expect(await countOutbox(database.db)).toBe(0);
    await expectOneSweepRecovers(handlers);
  });

  test('sweep stops and the next finishes', async () => {
    const handlers = drainerHandlers(settings);
    await commitSites(createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' }), BACKLOG, 'Swept');
    await slowDownCacheWrites();

    const first = await sweep(handlers, MARGIN_MS + DRAIN_WINDOW_MS);

    expect(first.drain.stoppedBy).toBe('deadline');
    expect(first.drain.rebuilt).toBeGreaterThan(0);
    expect(first.drain.remaining).toBeGreaterThan(0);
    expect(first.drain.rebuilt + first.drain.remaining).toBe(BACKLOG);
    expect(first.status.pending).toBe(first.drain.remaining);
    const pending = await pendingSiteIds();
    expect(await readSortedCache(database.db)).toEqual(await expectedPartialCache([], pending));
    const stopped = linesWithMessage('info', 'drain stopped at the deadline with rows left; sent a follow-up nudge');
    expect(stopped.map((line) => line.attributes?.remaining)).toEqual([first.drain.remaining]);
    const nudges = await receiveNudges(2);
    expect(nudges.map((nudge) => nudge.objects)).toEqual([first.drain.remaining]);

    await restoreCacheWriteSpeed();
    await expectOneSweepRecovers(handlers);
  });

  test('follow-up nudge to a silent server', async () => {
    const sites = 20;
    const silent = await startRelay(undefined);
    const queueUrl = `${silent.endpoint}/000000000000/follow-up-silent`;
    const handlers = createDrainerHandlers({
      indexes: FIXTURE_INDEXES,
      environment: { DATABASE_URL: database.url, DB_SSL: 'disable', SEARCH_OUTBOX_QUEUE_URL: queueUrl, ...settings },
      database: { db: database.db, setSecret() {}, close: async () => {} },
      logger: new ForwardingLogger(capturingLogger(logLines), { logLevel: 'DEBUG' }),
      metrics: new ForwardingMetrics({ onPublish: () => {} }),
      sqsClient: sqsClientFor(silent.endpoint),
    });
    await commitSites(createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' }), sites, 'Late');

    // Less time than the margin: the drain stops before its first batch.
    const result = await sweep(handlers, DRAIN_WINDOW_MS);

    expect(result.drain.stoppedBy).toBe('deadline');
    expect(result.drain.remaining).toBe(sites);
    expect(silent.requests).toEqual(['AmazonSQS.SendMessage']);
    const failed = linesWithMessage('warn', 'the follow-up nudge failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]?.attributes).toMatchObject({ remaining: sites, queueUrl });
    expect(String(failed[0]?.attributes?.error)).toMatch(/^SendMessage timed out after \d+ ms$/);
    expectNoCredentialLogged();

    await expectOneSweepRecovers(handlers);
  });

  test('blocked batch finishes after the deadline', async () => {
    const sites = 30;
    // A wider margin than the other tests', so that the function still has
    // time for the follow-up nudge after the test releases the lock.
    const marginMs = 2 * MARGIN_MS;
    const handlers = drainerHandlers({ ...settings, SEARCH_OUTBOX_DEADLINE_MARGIN_MS: String(marginMs) });
    const quiet = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    await commitSites(quiet, sites, 'Original');
    await sweep(handlers);
    const before = await readSortedCache(database.db);
    await renameSites(quiet, sites, 'Renamed');
    const lock = await lockSiteTable();

    // The sweep's first batch blocks on the lock after deleting its sites'
    // cache rows. The lock is released only after the drain's deadline.
    const context = lambdaContext(marginMs + DRAIN_WINDOW_MS, 'faults-sweep');
    const running = handlers.schedule(createScheduledEvent(), context);
    await waitFor(async () => (await backendsWaitingForLock()).length === 1, 'the batch to wait for the lock');
    await waitFor(() => context.getRemainingTimeInMillis() < marginMs, 'the drain deadline to pass');
    await lock.release();
    const result = await running;

    expect(result.drain.stoppedBy).toBe('deadline');
    expect(result.drain.batches).toBe(1);
    expect(result.drain.rebuilt).toBe(BATCH_SIZE);
    expect(result.drain.remaining).toBe(sites - BATCH_SIZE);
    const pending = await pendingSiteIds();
    expect(pending.size).toBe(sites - BATCH_SIZE);
    expect(await readSortedCache(database.db)).toEqual(await expectedPartialCache(before, pending));
    const stopped = linesWithMessage('info', 'drain stopped at the deadline with rows left; sent a follow-up nudge');
    expect(stopped.map((line) => line.attributes?.remaining)).toEqual([sites - BATCH_SIZE]);
    expect((await receiveNudges(2)).map((nudge) => nudge.objects)).toEqual([sites - BATCH_SIZE]);

    await expectOneSweepRecovers(handlers);
  });

  test('function timeout rolls the batch back', async () => {
    const sites = 30;
    const server = localSqs();
    const client = sqsClientFor(server.endpoint);
    const handlers = drainerHandlers(settings);
    const quiet = createSearchOutbox({ db: database.db, indexes: FIXTURE_INDEXES, dispatcher: 'none' });
    await commitSites(quiet, sites, 'Original');
    await sweep(handlers);
    const before = await readSortedCache(database.db);
    await renameSites(applicationOutbox(server.queueUrl, client), sites, 'Renamed');
    const lock = await lockSiteTable();

    // The invocation's first batch blocks on the lock until the function
    // times out. middy then fails the invocation while the batch goes on,
    // as it would in a Lambda function frozen after the invocation.
    const pollOptions = {
      client,
      queueUrl: server.queueUrl,
      queueArn: server.queueArn,
      waitTimeSeconds: 2,
      logger: capturingLogger(logLines),
    };
    const timedOut = await pollOnce({ ...pollOptions, functionTimeoutMs: MARGIN_MS + DRAIN_WINDOW_MS, handler: handlers.sqs });

    expect(timedOut?.error).toMatch(/^The sqs handler timed out/);
    expect(timedOut?.deleted).toEqual([]);
    expect(timedOut?.failed).toEqual(timedOut?.received);
    expect(linesWithMessage('error', 'the handler did not finish before the function timeout')).toHaveLength(1);
    expect(linesWithMessage('error', 'the SQS handler threw')).toHaveLength(1);
    const blocked = await backendsWaitingForLock();
    expect(blocked).toHaveLength(1);

    // A frozen function's session ends at PostgreSQL's statement or
    // idle-in-transaction timeout, or when Lambda shuts the function down.
    // Terminating the backend ends it here without the wait.
    await sql`SELECT pg_terminate_backend(${blocked[0]}::int)`.execute(database.db);
    await waitFor(
      () => linesWithMessage('warn', 'no time to send a follow-up nudge').length === 1,
      'the drain of the timed-out invocation to stop',
    );

    expect(await readSortedCache(database.db)).toEqual(before);
    expect(await countOutbox(database.db, 'pending')).toBe(sites);
    expect(linesWithMessage('warn', 'drain failed on a dead database connection')).toHaveLength(1);
    expect(linesWithMessage('warn', 'no time to send a follow-up nudge')[0]?.attributes?.remaining).toBe(sites);

    await lock.release();
    let redelivered: BatchOutcome | undefined;
    await waitFor(async () => {
      redelivered = await pollOnce({ ...pollOptions, functionTimeoutMs: 30_000, handler: handlers.sqs });
      return redelivered !== undefined;
    }, 'the message to be received again');

    expect(redelivered?.received).toEqual(timedOut?.received);
    expect(redelivered?.event.Records[0]?.attributes.ApproximateReceiveCount).toBe('2');
    expect(redelivered?.deleted).toEqual(redelivered?.received);
    expect(await countOutbox(database.db)).toBe(0);
    await expectOneSweepRecovers(handlers);
  });
});
