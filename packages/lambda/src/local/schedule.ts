import { randomUUID } from 'node:crypto';
import { errorMessage, silentLogger, ValidationError, type Logger } from '@search-outbox/core';
import type { Context, ScheduledEvent } from 'aws-lambda';
import { createLambdaContext } from './poller.js';

/** An EventBridge-triggered Lambda handler, such as the `schedule` handler of `createDrainerHandlers`. */
export type ScheduleHandler<Result> = (event: ScheduledEvent, context: Context) => Promise<Result>;

/** Creates the event that an EventBridge schedule rule sends to its target. */
export function createScheduledEvent(options: { readonly ruleName?: string; readonly region?: string } = {}): ScheduledEvent {
  const region = options.region ?? 'us-east-1';
  const ruleName = options.ruleName ?? 'search-outbox-sweep-local';
  return {
    version: '0',
    id: randomUUID(),
    'detail-type': 'Scheduled Event',
    source: 'aws.events',
    account: '000000000000',
    time: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
    region,
    resources: [`arn:aws:events:${region}:000000000000:rule/${ruleName}`],
    detail: {},
  };
}

export interface ScheduleOptions<Result> {
  readonly handler: ScheduleHandler<Result>;
  /** Time between the end of one invocation and the start of the next, in milliseconds. */
  readonly intervalMs: number;
  readonly signal: AbortSignal;
  /** Function timeout that `context.getRemainingTimeInMillis()` counts down from, in milliseconds. Default: 60000. */
  readonly functionTimeoutMs?: number;
  /** `context.functionName`. Default: `search-outbox-sweep-local`. */
  readonly functionName?: string;
  readonly logger?: Logger;
  /** Called with the result of each invocation that did not throw. */
  readonly onResult?: (result: Result) => void;
}

/**
 * Invokes the handler every `intervalMs` with a scheduled event until
 * `signal` aborts, the first time after one interval. A thrown error is
 * logged and the schedule goes on, as EventBridge fires the next time anyway.
 */
export async function runSchedule<Result>(options: ScheduleOptions<Result>): Promise<void> {
  if (!Number.isSafeInteger(options.intervalMs) || options.intervalMs < 1) {
    throw new ValidationError('intervalMs', options.intervalMs, 'must be a positive integer of milliseconds');
  }
  const logger = options.logger ?? silentLogger;
  const functionName = options.functionName ?? 'search-outbox-sweep-local';

  while (!options.signal.aborted) {
    await sleep(options.intervalMs, options.signal);
    if (options.signal.aborted) break;
    const context = createLambdaContext({ functionName, timeoutMs: options.functionTimeoutMs ?? 60_000 });
    try {
      const result = await options.handler(createScheduledEvent(), context);
      options.onResult?.(result);
    } catch (error) {
      logger.error('the scheduled handler failed; it runs again at the next interval', {
        functionName,
        error: errorMessage(error),
      });
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
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
