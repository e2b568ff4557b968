import { CreateQueueCommand, GetQueueAttributesCommand, SQSClient } from '@aws-sdk/client-sqs';
import { ValidationError } from '@search-outbox/core';

/** Region of the local server's queues and of its clients. */
export const LOCAL_SQS_REGION = 'us-east-1';

/**
 * Credentials the local clients sign with. The local server accepts any,
 * and explicit credentials keep the SDK from looking for real ones.
 */
const LOCAL_CREDENTIALS = { accessKeyId: 'local', secretAccessKey: 'local' } as const;

export interface LocalSqsOptions {
  /** Name of the drainer's queue; its dead-letter queue is named `<queueName>-dlq`. Default: `search-outbox-drainer`. */
  readonly queueName?: string;
  /** Receives of a message before SQS moves it to the dead-letter queue (RedrivePolicy maxReceiveCount). Default: 3. */
  readonly maxReceiveCount?: number;
  /** Seconds a received message stays invisible to other receivers. Default: 30. */
  readonly visibilityTimeoutSeconds?: number;
}

/** An SQS server on 127.0.0.1 with the drainer's queue and its dead-letter queue. */
export interface LocalSqs {
  /** `http://127.0.0.1:<port>`: the endpoint every client of this server must use. */
  readonly endpoint: string;
  readonly port: number;
  readonly queueUrl: string;
  readonly queueArn: string;
  readonly deadLetterQueueUrl: string;
  readonly deadLetterQueueArn: string;
  /** A client with the local endpoint, dummy credentials and region us-east-1. */
  readonly client: SQSClient;
  /** Reads a queue's approximate message counts (default: the drainer's queue). */
  messageCounts(queueUrl?: string): Promise<MessageCounts>;
  /** Stops the server and destroys the client; the queues and their messages are lost. Safe to call twice. */
  stop(): Promise<void>;
}

/** Approximate message counts of a queue, as GetQueueAttributes returns them. */
export interface MessageCounts {
  /** Messages ready to be received. */
  readonly visible: number;
  /** Received messages whose visibility timeout has not ended. */
  readonly inFlight: number;
  readonly delayed: number;
}

const QUEUE_NAME_PATTERN = /^[A-Za-z0-9_-]{1,76}$/;

/**
 * Starts a fauxqs SQS server listening on 127.0.0.1 only, on a free port,
 * and creates the queue and its dead-letter queue through the SQS API.
 *
 * The queue URLs use fauxqs's host name scheme
 * (`http://sqs.us-east-1.localhost:<port>/000000000000/<name>`), so they are
 * identifiers only: clients must send to `endpoint`, as `createLocalSqsClient` does.
 */
export async function startLocalSqs(options: LocalSqsOptions = {}): Promise<LocalSqs> {
  const queueName = options.queueName ?? 'search-outbox-drainer';
  if (!QUEUE_NAME_PATTERN.test(queueName)) {
    throw new ValidationError('queueName', queueName, 'must be 1 to 76 letters, digits, hyphens or underscores');
  }
  const maxReceiveCount = integerOption('maxReceiveCount', options.maxReceiveCount, 3, 1, 1000);
  const visibilityTimeoutSeconds = integerOption('visibilityTimeoutSeconds', options.visibilityTimeoutSeconds, 30, 0, 43_200);

  // Imported here, not at the top, so that a Lambda bundle of the handlers
  // that never starts a local server does not load fastify at cold start.
  const { buildApp } = await import('fauxqs');
  // startFauxqs() of fauxqs 1.9 always listens on 0.0.0.0, so the server is
  // built with buildApp() and bound to the loopback address here.
  const app = buildApp({ logger: false, defaultRegion: LOCAL_SQS_REGION });
  let client: SQSClient | undefined;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    client?.destroy();
    await app.close();
  };

  try {
    await app.listen({ port: 0, host: '127.0.0.1' });
    const address = app.server.address();
    if (address === null || typeof address === 'string') {
      throw new Error(`the local SQS server has no TCP address: ${String(address)}`);
    }
    const endpoint = `http://127.0.0.1:${address.port}`;
    client = createLocalSqsClient(endpoint);

    const deadLetter = await createQueue(client, `${queueName}-dlq`, {});
    const queue = await createQueue(client, queueName, {
      VisibilityTimeout: String(visibilityTimeoutSeconds),
      RedrivePolicy: JSON.stringify({ deadLetterTargetArn: deadLetter.arn, maxReceiveCount }),
    });

    return {
      endpoint,
      port: address.port,
      queueUrl: queue.url,
      queueArn: queue.arn,
      deadLetterQueueUrl: deadLetter.url,
      deadLetterQueueArn: deadLetter.arn,
      client,
      messageCounts: (queueUrl = queue.url) => readMessageCounts(client as SQSClient, queueUrl),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * Creates an SQS client for a local server: the explicit endpoint, dummy
 * credentials and region mean that no request can go to AWS, and the SDK
 * sends to the endpoint even when a queue URL names another host.
 */
export function createLocalSqsClient(endpoint: string, options: { readonly maxAttempts?: number } = {}): SQSClient {
  const url = new URL(endpoint);
  if (url.hostname !== '127.0.0.1') {
    throw new ValidationError('endpoint', endpoint, 'must be an http://127.0.0.1:<port> address of a local SQS server');
  }
  return new SQSClient({
    endpoint,
    region: LOCAL_SQS_REGION,
    credentials: LOCAL_CREDENTIALS,
    useQueueUrlAsEndpoint: false,
    ...(options.maxAttempts === undefined ? {} : { maxAttempts: options.maxAttempts }),
  });
}

async function createQueue(
  client: SQSClient,
  name: string,
  attributes: Record<string, string>,
): Promise<{ url: string; arn: string }> {
  const created = await client.send(new CreateQueueCommand({ QueueName: name, Attributes: attributes }));
  const url = created.QueueUrl;
  if (url === undefined) throw new Error(`the local SQS server returned no URL for queue ${name}`);
  const read = await client.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ['QueueArn'] }));
  const arn = read.Attributes?.QueueArn;
  if (arn === undefined) throw new Error(`the local SQS server returned no ARN for queue ${name}`);
  return { url, arn };
}

async function readMessageCounts(client: SQSClient, queueUrl: string): Promise<MessageCounts> {
  const result = await client.send(
    new GetQueueAttributesCommand({
      QueueUrl: queueUrl,
      AttributeNames: [
        'ApproximateNumberOfMessages',
        'ApproximateNumberOfMessagesNotVisible',
        'ApproximateNumberOfMessagesDelayed',
      ],
    }),
  );
  const count = (name: string): number => {
    const value = Number(result.Attributes?.[name as keyof typeof result.Attributes]);
    if (!Number.isSafeInteger(value)) throw new Error(`GetQueueAttributes returned no ${name} for ${queueUrl}`);
    return value;
  };
  return {
    visible: count('ApproximateNumberOfMessages'),
    inFlight: count('ApproximateNumberOfMessagesNotVisible'),
    delayed: count('ApproximateNumberOfMessagesDelayed'),
  };
}

function integerOption(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ValidationError(name, value, `must be an integer from ${min} to ${max}`);
  }
  return value;
}
