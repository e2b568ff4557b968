import { describeValue, ValidationError } from '@search-outbox/core';

/**
 * Body of the SQS message sent after a commit. It is a nudge, not the work:
 * the outbox rows are the truth, and the drainer drains whatever is pending.
 */
export interface NudgeMessage {
  readonly kind: typeof NUDGE_KIND;
  readonly version: 1;
  /** Schemas recorded with the transaction's marks. */
  readonly schemas: readonly string[];
  /** Objects the transaction marked. */
  readonly objects: number;
  /** Ids of the transactions that wrote the marks (`pg_current_xact_id()` as text). */
  readonly transactionIds: readonly string[];
  /** When the message was sent, as an ISO 8601 timestamp. */
  readonly sentAt: string;
}

export const NUDGE_KIND = 'search-outbox.nudge';

/** Largest message body accepted, in characters; SQS itself accepts 256 KiB. */
const MAX_BODY_LENGTH = 64 * 1024;

/** Parses and validates a message body; throws a ValidationError that names the offending field. */
export function parseNudge(body: unknown): NudgeMessage {
  if (typeof body !== 'string') throw new ValidationError('body', body, 'must be a string of JSON');
  if (body.length > MAX_BODY_LENGTH) {
    throw new ValidationError('body', body, `must be at most ${MAX_BODY_LENGTH} characters long`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch (error) {
    throw new ValidationError('body', body, 'is not valid JSON', { cause: error });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ValidationError('body', body, 'must be a JSON object');
  }
  const message = parsed as Record<string, unknown>;
  if (message.kind !== NUDGE_KIND) {
    throw new ValidationError('body.kind', message.kind, `must be "${NUDGE_KIND}"`);
  }
  if (message.version !== 1) throw new ValidationError('body.version', message.version, 'must be 1');
  const schemas = requireStringArray(message.schemas, 'body.schemas', /^[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'a schema name');
  const transactionIds = requireStringArray(message.transactionIds, 'body.transactionIds', /^\d{1,20}$/, 'a transaction id');
  const objects = message.objects;
  if (typeof objects !== 'number' || !Number.isSafeInteger(objects) || objects < 0) {
    throw new ValidationError('body.objects', objects, 'must be a non-negative integer');
  }
  const sentAt = message.sentAt;
  if (typeof sentAt !== 'string' || Number.isNaN(Date.parse(sentAt))) {
    throw new ValidationError('body.sentAt', sentAt, 'must be an ISO 8601 timestamp');
  }
  return { kind: NUDGE_KIND, version: 1, schemas, objects, transactionIds, sentAt };
}

function requireStringArray(value: unknown, path: string, pattern: RegExp, itemDescription: string): string[] {
  if (!Array.isArray(value) || value.length > 1000) {
    throw new ValidationError(path, value, 'must be an array of at most 1000 strings');
  }
  return value.map((item, position) => {
    if (typeof item !== 'string' || !pattern.test(item)) {
      throw new ValidationError(`${path}[${position}]`, item, `must be ${itemDescription}, not ${describeValue(item)}`);
    }
    return item;
  });
}
