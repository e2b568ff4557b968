import { Logger as PowertoolsLogger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import middy, { type MiddlewareObj, type MiddyfiedHandler } from '@middy/core';
import secretsManager from '@middy/secrets-manager';
import {
  createSearchOutbox,
  errorMessage,
  SearchOutboxError,
  ValidationError,
  type DrainSummary,
  type IndexRegistry,
  type Logger,
  type OutboxStatus,
  type SearchIndex,
  type SearchOutbox,
} from '@search-outbox/core';
import type { Context, EventBridgeEvent, SQSBatchItemFailure, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { readDrainerConfig, type DrainerConfig } from './config.js';
import { createDrainerDatabase, withReconnect, type DrainerDatabase } from './database.js';
import { parseInvokePayload, type InvokePayload } from './invoke-payload.js';
import { NUDGE_KIND, parseNudge, type NudgeMessage } from './nudge.js';

export interface DrainerHandlersOptions {
  /** The application's search index declarations. */
  readonly indexes: IndexRegistry | readonly SearchIndex[];
  /** Environment to read the settings from. Default: `process.env`. */
  readonly environment?: Readonly<Record<string, string | undefined>>;
  /** Settings that win over the environment. */
  readonly config?: Partial<DrainerConfig>;
  /** Default: a Powertools logger with service name `search-outbox-drainer`. */
  readonly logger?: PowertoolsLogger;
  /** Default: Powertools metrics in namespace `SearchOutbox`. */
  readonly metrics?: Metrics;
  /** Default: a pool built from the settings. Tests pass their own. */
  readonly database?: DrainerDatabase;
  /** Client for follow-up nudges. Default: a new SQSClient. */
  readonly sqsClient?: SQSClient;
}

/** Result of the scheduled sweep. */
export interface SweepResult {
  readonly drain: DrainSummary;
  readonly status: OutboxStatus;
}

/** Result of a direct invocation: the action and its JSON summary. */
export interface InvokeResult {
  readonly action: InvokePayload['action'];
  readonly result: unknown;
}

export interface DrainerHandlers {
  /** SQS trigger: drains until the outbox is empty or the deadline is near; reports failures per record. */
  readonly sqs: MiddyfiedHandler<SQSEvent, SQSBatchResponse, Error, Context>;
  /** EventBridge schedule: the sweep, and the lag metrics. */
  readonly schedule: MiddyfiedHandler<EventBridgeEvent<string, unknown>, SweepResult, Error, Context>;
  /** Direct invocation with `{ action: 'drain' | 'rebuild' | 'status' | 'retry', ... }`. */
  readonly invoke: MiddyfiedHandler<unknown, InvokeResult, Error, Context>;
  readonly outbox: SearchOutbox;
  readonly config: DrainerConfig;
  readonly database: DrainerDatabase;
}

/** Secrets Manager results are reused for this long before they are fetched again, in milliseconds. */
const SECRET_CACHE_MS = 5 * 60 * 1000;

/** How long before the function timeout middy fails an invocation that is still running, in milliseconds. */
const TIMEOUT_EARLY_MS = 5;

/**
 * Creates the drainer's three Lambda handlers for the application's index
 * declarations. Call it at module scope: the settings are read and validated
 * once, and the database pool and clients are reused across invocations.
 */
export function createDrainerHandlers(options: DrainerHandlersOptions): DrainerHandlers {
  // A database passed in needs no connection settings from the environment.
  const overrides: Partial<DrainerConfig> =
    options.database !== undefined && options.config?.database === undefined
      ? { ...options.config, database: { kind: 'provided' } }
      : (options.config ?? {});
  const config = readDrainerConfig(options.environment ?? process.env, overrides);
  const powertoolsLogger = options.logger ?? new PowertoolsLogger({ serviceName: 'search-outbox-drainer' });
  const logger = adaptLogger(powertoolsLogger);
  const metrics = options.metrics ?? new Metrics({ namespace: 'SearchOutbox', serviceName: 'search-outbox-drainer' });
  const database = options.database ?? createDrainerDatabase(config, logger);
  const outbox = createSearchOutbox({
    db: database.db,
    indexes: options.indexes,
    outboxSchema: config.outboxSchema,
    logger,
    dispatcher: 'none',
  });
  const sqsClient =
    config.queueUrl === undefined
      ? undefined
      : (options.sqsClient ?? new SQSClient(config.region === undefined ? {} : { region: config.region }));

  // middy (@middy/core 6.4) stops waiting for the handler shortly before the
  // function timeout and fails the invocation, but the handler's promise goes
  // on, and on Lambda it is frozen with the function. A drain batch is one
  // transaction, so it commits or rolls back whole, and its rows stay pending
  // until then.
  const timeoutPlugin = (handlerName: string): middy.PluginObject => ({
    timeoutEarlyInMillis: TIMEOUT_EARLY_MS,
    timeoutEarlyResponse: () => {
      logger.error(
        'the handler did not finish before the function timeout; a running drain batch commits or rolls back whole, and the rows left wait for the next drain',
        { handler: handlerName },
      );
      throw new SearchOutboxError(
        `The ${handlerName} handler timed out: it was still running ${TIMEOUT_EARLY_MS} ms before the function timeout`,
      );
    },
  });

  const common = (): MiddlewareObj[] => {
    const middlewares: MiddlewareObj[] = [injectLambdaContext(powertoolsLogger), logMetrics(metrics)];
    const credentials = config.database;
    if (credentials.kind === 'secret' && options.database === undefined) {
      middlewares.push(
        secretsManager({
          fetchData: { databaseSecret: credentials.secretId as string },
          setToContext: true,
          cacheExpiry: SECRET_CACHE_MS,
          // Fetch on the first invocation, not at import: importing the
          // bundle must never call AWS (tests and tools import it offline).
          disablePrefetch: true,
        }) as MiddlewareObj,
        {
          before: async (request) => {
            database.setSecret((request.context as unknown as { databaseSecret?: unknown }).databaseSecret);
          },
        },
      );
    }
    return middlewares;
  };

  // Each retry may draw another dead idle connection, so there is one per pooled connection.
  const reconnecting = <T>(work: () => Promise<T>, what: string): Promise<T> =>
    withReconnect(work, logger, what, { retries: config.poolMax });

  const drainUntilDeadline = async (context: Context): Promise<DrainSummary> => {
    const summary = await reconnecting(
      () => outbox.drain({ deadline: deadlineOf(context, config), batchSize: config.batchSize }),
      'drain',
    );
    recordDrainMetrics(metrics, summary);
    if (summary.stoppedBy === 'deadline' && summary.remaining > 0) await sendFollowUp(summary, context);
    return summary;
  };

  const sendFollowUp = async (summary: DrainSummary, context: Context): Promise<void> => {
    const remaining = summary.remaining;
    const queueUrl = config.queueUrl;
    if (sqsClient === undefined || queueUrl === undefined) {
      logger.info('drain stopped at the deadline with rows left; the scheduled sweep continues', { remaining });
      return;
    }
    // The send may take half of the time left, so that the handler still returns before the function timeout.
    const sendTimeoutMs = Math.floor(remainingTimeOf(context) / 2);
    if (sendTimeoutMs < 1) {
      logger.warn('drain stopped at the deadline with rows left and no time to send a follow-up nudge; the scheduled sweep drains them', {
        remaining,
        queueUrl,
      });
      return;
    }
    const message: NudgeMessage = {
      kind: NUDGE_KIND,
      version: 1,
      schemas: [],
      objects: remaining,
      transactionIds: [],
      sentAt: new Date().toISOString(),
    };
    const signal = AbortSignal.timeout(sendTimeoutMs);
    try {
      await sqsClient.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(message) }), {
        abortSignal: signal,
      });
      logger.info('drain stopped at the deadline with rows left; sent a follow-up nudge', { remaining, queueUrl });
    } catch (error) {
      logger.warn('drain stopped at the deadline with rows left, and the follow-up nudge failed; the scheduled sweep drains them', {
        remaining,
        queueUrl,
        error: signal.aborted ? `SendMessage timed out after ${sendTimeoutMs} ms` : errorMessage(error),
      });
    }
  };

  const sqs = middy<SQSEvent, SQSBatchResponse, Error, Context>(timeoutPlugin('sqs'))
    .use(common())
    .handler(async (event, context) => {
      const records = recordsOf(event);
      const failures: SQSBatchItemFailure[] = [];
      let valid = 0;
      for (const record of records) {
        try {
          parseNudge(record?.body);
          valid += 1;
        } catch (error) {
          logger.warn('rejected a malformed SQS record', { messageId: record?.messageId, error: errorMessage(error) });
          if (typeof record?.messageId === 'string') failures.push({ itemIdentifier: record.messageId });
        }
      }
      if (valid === 0) return { batchItemFailures: failures };

      try {
        await drainUntilDeadline(context);
      } catch (error) {
        logger.error('drain failed; every record is reported failed so that SQS delivers it again', {
          error: errorMessage(error),
          records: records.length,
        });
        const all = records
          .map((record) => record?.messageId)
          .filter((id): id is string => typeof id === 'string')
          .map((itemIdentifier) => ({ itemIdentifier }));
        return { batchItemFailures: all };
      }
      return { batchItemFailures: failures };
    });

  const schedule = middy<EventBridgeEvent<string, unknown>, SweepResult, Error, Context>(timeoutPlugin('schedule'))
    .use(common())
    .handler(async (_event, context) => {
      const drain = await drainUntilDeadline(context);
      const status = await reconnecting(() => outbox.status(), 'status');
      recordStatusMetrics(metrics, status);
      return { drain, status };
    });

  const invoke = middy<unknown, InvokeResult, Error, Context>(timeoutPlugin('invoke'))
    .use(common())
    .handler(async (event, context) => {
      const payload = parseInvokePayload(event);
      logger.info('invoked', { action: payload.action });
      const result = await runAction(payload, context);
      return { action: payload.action, result };
    });

  const runAction = async (payload: InvokePayload, context: Context): Promise<unknown> => {
    switch (payload.action) {
      case 'drain': {
        const summary = await reconnecting(
          () =>
            outbox.drain({
              deadline: deadlineOf(context, config),
              batchSize: payload.batchSize ?? config.batchSize,
              ...(payload.maxBatches === undefined ? {} : { maxBatches: payload.maxBatches }),
            }),
          'drain',
        );
        recordDrainMetrics(metrics, summary);
        return summary;
      }
      case 'rebuild':
        return reconnecting(() => rebuildUntilDeadline(payload, context), 'rebuild');
      case 'status': {
        const status = await reconnecting(() => outbox.status(), 'status');
        recordStatusMetrics(metrics, status);
        return status;
      }
      case 'retry':
        return reconnecting(
          () =>
            outbox.retry({
              ...(payload.objectType === undefined ? {} : { objectType: payload.objectType }),
              ...(payload.objectIds === undefined ? {} : { objectIds: payload.objectIds }),
            }),
          'retry',
        );
    }
  };

  const rebuildUntilDeadline = async (payload: Extract<InvokePayload, { action: 'rebuild' }>, context: Context) => {
    // The rebuild stops between chunks near the deadline; invoking it again resumes it.
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), Math.max(0, deadlineOf(context, config) - Date.now()));
    try {
      const summary = await outbox.rebuild({
        schema: payload.schema ?? config.cacheSchema,
        ...(payload.objectTypes === undefined ? {} : { objectTypes: payload.objectTypes }),
        ...(payload.chunkSize === undefined ? {} : { chunkSize: payload.chunkSize }),
        ...(payload.restart === undefined ? {} : { restart: payload.restart }),
        signal: controller.signal,
      });
      return { ...summary, resumable: summary.aborted };
    } finally {
      clearTimeout(timer);
    }
  };

  return { sqs, schedule, invoke, outbox, config, database };
}

function recordsOf(event: SQSEvent): SQSEvent['Records'] {
  if (typeof event !== 'object' || event === null || !Array.isArray(event.Records)) {
    throw new ValidationError('event.Records', (event as { Records?: unknown } | null)?.Records, 'must be an array of SQS records');
  }
  return event.Records;
}

/** Returns the moment to stop starting batches: the function's deadline minus the margin. */
function deadlineOf(context: Context, config: DrainerConfig): number {
  return Date.now() + remainingTimeOf(context) - config.deadlineMarginMs;
}

/** Returns the milliseconds left before the function timeout, or 60000 for a context without getRemainingTimeInMillis. */
function remainingTimeOf(context: Context): number {
  return typeof context?.getRemainingTimeInMillis === 'function' ? context.getRemainingTimeInMillis() : 60_000;
}

function recordDrainMetrics(metrics: Metrics, summary: DrainSummary): void {
  metrics.addMetric('Rebuilt', MetricUnit.Count, summary.rebuilt);
  metrics.addMetric('Removed', MetricUnit.Count, summary.removed);
  metrics.addMetric('Failed', MetricUnit.Count, summary.failed);
  metrics.addMetric('Dead', MetricUnit.Count, summary.dead);
  metrics.addMetric('DrainDuration', MetricUnit.Milliseconds, summary.durationMs);
}

function recordStatusMetrics(metrics: Metrics, status: OutboxStatus): void {
  metrics.addMetric('PendingRows', MetricUnit.Count, status.pending);
  metrics.addMetric('DeadRows', MetricUnit.Count, status.dead);
  metrics.addMetric('FailedRows', MetricUnit.Count, status.failed);
  metrics.addMetric('OldestPendingAge', MetricUnit.Seconds, status.oldestPendingAgeSeconds ?? 0);
}

/** Adapts the Powertools logger to the core's logger interface. */
function adaptLogger(logger: PowertoolsLogger): Logger {
  return {
    debug: (message, attributes) => logger.debug(message, attributes ?? {}),
    info: (message, attributes) => logger.info(message, attributes ?? {}),
    warn: (message, attributes) => logger.warn(message, attributes ?? {}),
    error: (message, attributes) => logger.error(message, attributes ?? {}),
  };
}

export type { NudgeMessage };
