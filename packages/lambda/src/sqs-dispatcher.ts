import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import {
  errorMessage,
  SearchOutboxError,
  ValidationError,
  type CommittedTransaction,
  type Dispatcher,
} from '@search-outbox/core';
import { NUDGE_KIND, type NudgeMessage } from './nudge.js';

export interface SqsDispatcherOptions {
  /** URL of the drainer's queue, such as `https://sqs.eu-west-1.amazonaws.com/123456789012/drainer`. */
  readonly queueUrl: string;
  /** Client to send with. Default: a new SQSClient with the SDK's default configuration. */
  readonly client?: SQSClient;
  /**
   * Maximum time of one send, the SDK's retries included, in milliseconds.
   * The commit returns only after the send, and the SDK's HTTP handler
   * (@smithy/node-http-handler 4.14) has no request timeout by default, so
   * this bounds what an unresponsive queue adds to a commit.
   * Integer from 1 to 300000. Default: 5000.
   */
  readonly sendTimeoutMs?: number;
}

const DEFAULT_SEND_TIMEOUT_MS = 5_000;

/**
 * Creates a dispatcher that sends one SQS message per committed transaction.
 * A failed or timed-out send throws an error that names the queue. The
 * transaction helper logs and counts it, and the scheduled sweep drains what
 * the message would have announced.
 */
export function createSqsDispatcher(options: SqsDispatcherOptions): Dispatcher {
  const queueUrl = validateQueueUrl(options?.queueUrl);
  const sendTimeoutMs = validateSendTimeout(options.sendTimeoutMs);
  const client = options.client ?? new SQSClient({});

  return {
    async dispatch(committed: CommittedTransaction): Promise<void> {
      const message: NudgeMessage = {
        kind: NUDGE_KIND,
        version: 1,
        schemas: committed.schemas,
        objects: committed.objects,
        transactionIds: committed.transactionIds,
        sentAt: new Date().toISOString(),
      };
      const signal = AbortSignal.timeout(sendTimeoutMs);
      try {
        await client.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify(message) }), {
          abortSignal: signal,
        });
      } catch (error) {
        const outcome = signal.aborted ? `timed out after ${sendTimeoutMs} ms` : `failed: ${errorMessage(error)}`;
        throw new SearchOutboxError(`SendMessage to ${queueUrl} ${outcome}`, { cause: error });
      }
    },
  };
}

function validateSendTimeout(value: unknown): number {
  if (value === undefined) return DEFAULT_SEND_TIMEOUT_MS;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > 300_000) {
    throw new ValidationError('sendTimeoutMs', value, 'must be an integer of milliseconds from 1 to 300000');
  }
  return value;
}

/** Throws a ValidationError unless `value` is an http or https URL. */
export function validateQueueUrl(value: unknown, path = 'queueUrl'): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new ValidationError(path, value, 'must be the URL of an SQS queue');
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ValidationError(path, value, 'is not a valid URL; expected https://sqs.<region>.amazonaws.com/<account>/<queue>');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ValidationError(path, value, 'must use https (or http for a local SQS server)');
  }
  return value;
}

/**
 * Returns the SQS dispatcher when `SEARCH_OUTBOX_QUEUE_URL` is set, and
 * `inline` otherwise: without a queue, the transaction helper drains the
 * committed transaction's objects in the application's process.
 */
export function dispatcherFromEnvironment(
  environment: Readonly<Record<string, string | undefined>> = process.env,
  client?: SQSClient,
): Dispatcher | 'inline' {
  const queueUrl = environment.SEARCH_OUTBOX_QUEUE_URL?.trim();
  if (queueUrl === undefined || queueUrl === '') return 'inline';
  return createSqsDispatcher({
    queueUrl: validateQueueUrl(queueUrl, 'SEARCH_OUTBOX_QUEUE_URL'),
    ...(client === undefined ? {} : { client }),
  });
}
