import { randomUUID } from 'node:crypto';
import {
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  type DeleteMessageBatchCommandOutput,
  type Message,
  type MessageAttributeValue,
  type SQSClient,
} from '@aws-sdk/client-sqs';
import { errorMessage, SearchOutboxError, silentLogger, ValidationError, type Logger } from '@search-outbox/core';
import type { Context, SQSBatchResponse, SQSEvent, SQSMessageAttributes, SQSRecord } from 'aws-lambda';

/** An SQS-triggered Lambda handler, such as the `sqs` handler of `createDrainerHandlers`. */
export type SqsHandler = (event: SQSEvent, context: Context) => Promise<SQSBatchResponse | void | undefined>;

export interface PollOptions {
  readonly client: SQSClient;
  readonly queueUrl: string;
  readonly handler: SqsHandler;
  /** ARN put in each record's `eventSourceARN`. Default: read once from the queue's `QueueArn` attribute. */
  readonly queueArn?: string;
  /** Messages per ReceiveMessage call and per invocation, from 1 to 10 (the ReceiveMessage limit). Default: 10. */
  readonly batchSize?: number;
  /** Long-polling wait of each ReceiveMessage call, in seconds, from 0 to 20. Default: 20. */
  readonly waitTimeSeconds?: number;
  /** Function timeout that `context.getRemainingTimeInMillis()` counts down from, in milliseconds. Default: 60000. */
  readonly functionTimeoutMs?: number;
  /** `context.functionName`. Default: `search-outbox-drainer-local`. */
  readonly functionName?: string;
  /** Region put in each record's `awsRegion`. Default: the region of the queue ARN, else us-east-1. */
  readonly region?: string;
  readonly logger?: Logger;
  /** Called after each invocation with what happened to the batch. */
  readonly onBatch?: (batch: BatchOutcome) => void;
}

export interface PollQueueOptions extends PollOptions {
  /** Stops the loop; a ReceiveMessage call in flight is cancelled. */
  readonly signal: AbortSignal;
  /** Wait after a failed ReceiveMessage or DeleteMessageBatch before the next poll, in milliseconds. Default: 1000. */
  readonly errorBackoffMs?: number;
}

/** Result of one poll: the received messages, the handler's response and the deletes. */
export interface BatchOutcome {
  readonly event: SQSEvent;
  /** Ids of the messages received in this poll. */
  readonly received: readonly string[];
  /** Ids of the messages deleted because the handler reported them processed. */
  readonly deleted: readonly string[];
  /**
   * Ids of the messages the handler processed but that could not be deleted.
   * SQS delivers them again after the visibility timeout, so the handler must be idempotent.
   */
  readonly undeleted: readonly string[];
  /** Ids of the messages left on the queue, to be received again after the visibility timeout. */
  readonly failed: readonly string[];
  /** Message of the DeleteMessageBatch error, or undefined when every delete succeeded. */
  readonly deleteError: string | undefined;
  /** The handler's response, or undefined when it threw. */
  readonly response: SQSBatchResponse | undefined;
  /** Message of the error the handler threw, or of its timeout. */
  readonly error: string | undefined;
  readonly durationMs: number;
}

const DEFAULT_FUNCTION_TIMEOUT_MS = 60_000;

/**
 * Receives one batch and passes it to the handler the way Lambda's SQS event
 * source mapping does with `ReportBatchItemFailures`. The messages the
 * handler did not report failed are deleted. The failed ones stay on the
 * queue until their visibility timeout ends, so SQS moves them to the
 * dead-letter queue after `maxReceiveCount` receives. When the handler
 * throws, returns an invalid response or runs past the function timeout, no
 * message is deleted. Returns undefined when the queue had no message.
 * A failed ReceiveMessage throws. A failed delete is logged and reported in
 * the outcome, because the handler's work is done by then.
 */
export async function pollOnce(options: PollOptions, signal?: AbortSignal): Promise<BatchOutcome | undefined> {
  const settings = resolveSettings(options);
  const queueArn = options.queueArn ?? (await readQueueArn(options.client, options.queueUrl, signal));
  return receiveAndInvoke(options, settings, queueArn, signal);
}

/**
 * Polls the queue until `signal` aborts, invoking the handler once per
 * non-empty batch, one batch at a time. A failed SQS call is logged with the
 * count of failures in a row, and the next poll waits `errorBackoffMs`. The
 * first poll that works again is logged too. The handler's own errors leave
 * its batch on the queue, as on Lambda.
 */
export async function pollQueue(options: PollQueueOptions): Promise<void> {
  const settings = resolveSettings(options);
  const logger = options.logger ?? silentLogger;
  const backoffMs = options.errorBackoffMs ?? 1000;
  let queueArn = options.queueArn;
  let consecutiveFailures = 0;
  logger.info('poller started', { queueUrl: options.queueUrl, batchSize: settings.batchSize });

  while (!options.signal.aborted) {
    let outcome: BatchOutcome | undefined;
    try {
      queueArn ??= await readQueueArn(options.client, options.queueUrl, options.signal);
      outcome = await receiveAndInvoke(options, settings, queueArn, options.signal);
    } catch (error) {
      if (options.signal.aborted) break;
      consecutiveFailures += 1;
      logger.warn('polling the queue failed; retrying', {
        queueUrl: options.queueUrl,
        error: errorMessage(error),
        consecutiveFailures,
        retryInMs: backoffMs,
      });
      await sleep(backoffMs, options.signal);
      continue;
    }
    if (consecutiveFailures > 0) {
      logger.info('polling the queue works again', { queueUrl: options.queueUrl, failedAttempts: consecutiveFailures });
      consecutiveFailures = 0;
    }
    // A failed delete usually means that the queue is unreachable, so the next poll waits as after a failed receive.
    if (outcome?.deleteError !== undefined) await sleep(backoffMs, options.signal);
  }
  logger.info('poller stopped', { queueUrl: options.queueUrl });
}

interface PollSettings {
  readonly batchSize: number;
  readonly waitTimeSeconds: number;
  readonly functionTimeoutMs: number;
  readonly functionName: string;
}

function resolveSettings(options: PollOptions): PollSettings {
  if (typeof options?.handler !== 'function') {
    throw new ValidationError('handler', options?.handler, 'must be a function (event, context) returning a promise');
  }
  return {
    batchSize: integerOption('batchSize', options.batchSize, 10, 1, 10),
    waitTimeSeconds: integerOption('waitTimeSeconds', options.waitTimeSeconds, 20, 0, 20),
    functionTimeoutMs: integerOption('functionTimeoutMs', options.functionTimeoutMs, DEFAULT_FUNCTION_TIMEOUT_MS, 1, 900_000),
    functionName: options.functionName ?? 'search-outbox-drainer-local',
  };
}

async function receiveAndInvoke(
  options: PollOptions,
  settings: PollSettings,
  queueArn: string,
  signal: AbortSignal | undefined,
): Promise<BatchOutcome | undefined> {
  const logger = options.logger ?? silentLogger;
  const received = await sendRequest('ReceiveMessage', () =>
    options.client.send(
      new ReceiveMessageCommand({
        QueueUrl: options.queueUrl,
        MaxNumberOfMessages: settings.batchSize,
        WaitTimeSeconds: settings.waitTimeSeconds,
        MessageSystemAttributeNames: ['All'],
        MessageAttributeNames: ['All'],
      }),
      signal === undefined ? {} : { abortSignal: signal },
    ),
  );
  const messages = received.Messages ?? [];
  if (messages.length === 0) return undefined;

  const region = options.region ?? regionOfArn(queueArn) ?? 'us-east-1';
  const event: SQSEvent = { Records: messages.map((message) => toRecord(message, queueArn, region)) };
  const ids = event.Records.map((record) => record.messageId);
  logger.debug('received messages', { messageIds: ids });

  const started = Date.now();
  const context = createLambdaContext({ functionName: settings.functionName, timeoutMs: settings.functionTimeoutMs, region });
  let response: SQSBatchResponse | undefined;
  let error: string | undefined;
  try {
    response = (await options.handler(event, context)) ?? undefined;
  } catch (thrown) {
    error = errorMessage(thrown);
    logger.error('the SQS handler threw; every message of the batch stays on the queue', { messageIds: ids, error });
  }
  const durationMs = Date.now() - started;
  if (error === undefined && durationMs > settings.functionTimeoutMs) {
    // Lambda would have stopped the function at its timeout, with no response.
    error = `the handler ran ${durationMs} ms, longer than the function timeout of ${settings.functionTimeoutMs} ms`;
    logger.error('the SQS handler timed out; every message of the batch stays on the queue', { messageIds: ids, durationMs });
  }

  const failedIds = error === undefined ? failedMessageIds(response, ids, logger) : new Set(ids);
  const succeeded = event.Records.filter((record) => !failedIds.has(record.messageId));
  const deletion = await deleteMessages(options.client, options.queueUrl, succeeded, signal);
  if (deletion.error !== undefined) {
    logger.warn('deleting processed messages failed; they are received again after the visibility timeout', {
      queueUrl: options.queueUrl,
      messageIds: deletion.undeleted,
      error: deletion.error,
    });
  }

  const outcome: BatchOutcome = {
    event,
    received: ids,
    deleted: deletion.deleted,
    undeleted: deletion.undeleted,
    failed: ids.filter((id) => failedIds.has(id)),
    deleteError: deletion.error,
    response,
    error,
    durationMs,
  };
  logger.debug('processed batch', {
    deleted: outcome.deleted,
    undeleted: outcome.undeleted,
    failed: outcome.failed,
    durationMs,
  });
  options.onBatch?.(outcome);
  return outcome;
}

/**
 * Returns the ids the handler reported failed. As on Lambda, a response
 * whose `batchItemFailures` is not an array or names an id that is not in
 * the batch fails the whole batch. No response, or an empty list, fails none.
 */
function failedMessageIds(response: SQSBatchResponse | undefined, ids: readonly string[], logger: Logger): Set<string> {
  if (response === undefined || response === null) return new Set();
  const failures: unknown = (response as { batchItemFailures?: unknown }).batchItemFailures;
  if (failures === undefined) return new Set();
  const all = new Set(ids);
  if (!Array.isArray(failures)) {
    logger.error('the SQS handler returned batchItemFailures that is not an array; the whole batch failed', {
      messageIds: ids,
    });
    return all;
  }
  const failed = new Set<string>();
  for (const failure of failures) {
    const id = (failure as { itemIdentifier?: unknown } | null)?.itemIdentifier;
    if (typeof id !== 'string' || !all.has(id)) {
      logger.error('the SQS handler reported an itemIdentifier that is not in the batch; the whole batch failed', {
        itemIdentifier: id,
        messageIds: ids,
      });
      return all;
    }
    failed.add(id);
  }
  return failed;
}

interface DeleteResult {
  readonly deleted: string[];
  readonly undeleted: string[];
  readonly error: string | undefined;
}

/** Deletes the records' messages and returns which ids were deleted. A failed call or entry is returned as an error, not thrown. */
async function deleteMessages(
  client: SQSClient,
  queueUrl: string,
  records: readonly SQSRecord[],
  signal: AbortSignal | undefined,
): Promise<DeleteResult> {
  if (records.length === 0) return { deleted: [], undeleted: [], error: undefined };
  const ids = records.map((record) => record.messageId);
  let result: DeleteMessageBatchCommandOutput;
  try {
    result = await client.send(
      new DeleteMessageBatchCommand({
        QueueUrl: queueUrl,
        Entries: records.map((record, position) => ({ Id: String(position), ReceiptHandle: record.receiptHandle })),
      }),
      signal === undefined ? {} : { abortSignal: signal },
    );
  } catch (error) {
    return { deleted: [], undeleted: ids, error: `DeleteMessageBatch failed: ${errorMessage(error)}` };
  }
  const failed = result.Failed ?? [];
  if (failed.length === 0) return { deleted: ids, undeleted: [], error: undefined };

  // Entry ids are the records' positions in the request.
  const failedPositions = new Set(failed.map((entry) => Number(entry.Id)));
  const details = failed.map((entry) => {
    const messageId = records[Number(entry.Id)]?.messageId ?? `entry ${entry.Id}`;
    return `${messageId}: ${entry.Code ?? 'error'} ${entry.Message ?? ''}`.trim();
  });
  return {
    deleted: ids.filter((_, position) => !failedPositions.has(position)),
    undeleted: ids.filter((_, position) => failedPositions.has(position)),
    error: `DeleteMessageBatch failed for ${failed.length} of ${records.length} messages (${details.join('; ')})`,
  };
}

/** Builds the record that Lambda passes for a received message. */
export function toRecord(message: Message, queueArn: string, region: string): SQSRecord {
  const attributes = message.Attributes ?? {};
  const required = (value: string | undefined, name: string): string => {
    if (value === undefined) throw new Error(`ReceiveMessage returned message ${message.MessageId} without ${name}`);
    return value;
  };
  const record: SQSRecord = {
    messageId: required(message.MessageId, 'MessageId'),
    receiptHandle: required(message.ReceiptHandle, 'ReceiptHandle'),
    body: message.Body ?? '',
    attributes: {
      ApproximateReceiveCount: required(attributes.ApproximateReceiveCount, 'ApproximateReceiveCount'),
      SentTimestamp: required(attributes.SentTimestamp, 'SentTimestamp'),
      SenderId: required(attributes.SenderId, 'SenderId'),
      ApproximateFirstReceiveTimestamp: required(
        attributes.ApproximateFirstReceiveTimestamp,
        'ApproximateFirstReceiveTimestamp',
      ),
      ...optionalAttributes(attributes),
    },
    messageAttributes: toMessageAttributes(message.MessageAttributes ?? {}),
    md5OfBody: required(message.MD5OfBody, 'MD5OfBody'),
    eventSource: 'aws:sqs',
    eventSourceARN: queueArn,
    awsRegion: region,
  };
  if (message.MD5OfMessageAttributes !== undefined) record.md5OfMessageAttributes = message.MD5OfMessageAttributes;
  return record;
}

function optionalAttributes(attributes: Partial<Record<string, string>>): Partial<SQSRecord['attributes']> {
  const optional: Partial<SQSRecord['attributes']> = {};
  for (const name of ['AWSTraceHeader', 'SequenceNumber', 'MessageGroupId', 'MessageDeduplicationId'] as const) {
    const value = attributes[name];
    if (value !== undefined) optional[name] = value;
  }
  return optional;
}

/** Converts message attributes to Lambda's shape: camel-case keys, binary values as base64. */
function toMessageAttributes(attributes: Record<string, MessageAttributeValue>): SQSMessageAttributes {
  const converted: SQSMessageAttributes = {};
  for (const [name, value] of Object.entries(attributes)) {
    converted[name] = {
      dataType: value.DataType ?? 'String',
      stringListValues: value.StringListValues ?? [],
      binaryListValues: (value.BinaryListValues ?? []).map((item) => Buffer.from(item).toString('base64')),
      ...(value.StringValue === undefined ? {} : { stringValue: value.StringValue }),
      ...(value.BinaryValue === undefined ? {} : { binaryValue: Buffer.from(value.BinaryValue).toString('base64') }),
    };
  }
  return converted;
}

export interface LambdaContextOptions {
  readonly functionName: string;
  /** Function timeout in milliseconds; `getRemainingTimeInMillis()` counts down from it. */
  readonly timeoutMs: number;
  readonly region?: string;
  /** Default: 1024. */
  readonly memoryLimitInMB?: number;
}

/** Creates the Lambda `Context` of one invocation, with a deadline `timeoutMs` from now. */
export function createLambdaContext(options: LambdaContextOptions): Context {
  const deadline = Date.now() + options.timeoutMs;
  const region = options.region ?? 'us-east-1';
  const unsupported = (name: string) => (): never => {
    throw new Error(`context.${name}() is not supported: return a value or a promise from the handler`);
  };
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: options.functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:${region}:000000000000:function:${options.functionName}`,
    memoryLimitInMB: String(options.memoryLimitInMB ?? 1024),
    awsRequestId: randomUUID(),
    logGroupName: `/aws/lambda/${options.functionName}`,
    logStreamName: `local/${randomUUID()}`,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: unsupported('done'),
    fail: unsupported('fail'),
    succeed: unsupported('succeed'),
  };
}

async function readQueueArn(client: SQSClient, queueUrl: string, signal: AbortSignal | undefined): Promise<string> {
  const result = await sendRequest('GetQueueAttributes', () =>
    client.send(
      new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }),
      signal === undefined ? {} : { abortSignal: signal },
    ),
  );
  const arn = result.Attributes?.QueueArn;
  if (arn === undefined) throw new Error(`GetQueueAttributes returned no QueueArn for ${queueUrl}`);
  return arn;
}

/** Runs one SQS call and rethrows a failure with the operation's name in front of its message. */
async function sendRequest<Output>(operation: string, call: () => Promise<Output>): Promise<Output> {
  try {
    return await call();
  } catch (error) {
    throw new SearchOutboxError(`${operation} failed: ${errorMessage(error)}`, { cause: error });
  }
}

/** Returns the region of an ARN such as `arn:aws:sqs:us-east-1:000000000000:queue`. */
function regionOfArn(arn: string): string | undefined {
  const region = arn.split(':')[3];
  return region === undefined || region === '' ? undefined : region;
}

function integerOption(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(name, value, `must be an integer from ${min} to ${max}`);
  }
  return value;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
