import { ValidationError } from '@search-outbox/core';

/** A direct invocation of the drainer: one action and its options. */
export type InvokePayload =
  | { readonly action: 'drain'; readonly batchSize?: number; readonly maxBatches?: number }
  | {
      readonly action: 'rebuild';
      readonly objectTypes?: readonly string[];
      readonly schema?: string;
      readonly chunkSize?: number;
      readonly restart?: boolean;
    }
  | { readonly action: 'status' }
  | { readonly action: 'retry'; readonly objectType?: string; readonly objectIds?: readonly string[] };

export type InvokeAction = InvokePayload['action'];

export const INVOKE_ACTIONS: readonly InvokeAction[] = ['drain', 'rebuild', 'status', 'retry'];

const ALLOWED_FIELDS: Readonly<Record<InvokeAction, readonly string[]>> = {
  drain: ['batchSize', 'maxBatches'],
  rebuild: ['objectTypes', 'schema', 'chunkSize', 'restart'],
  status: [],
  retry: ['objectType', 'objectIds'],
};

/**
 * Validates an invoke payload. Errors name the field and the value; values
 * the core validates again (types, ranges of sizes) are checked for shape here.
 */
export function parseInvokePayload(payload: unknown): InvokePayload {
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new ValidationError('payload', payload, `must be an object such as {"action": "status"}`);
  }
  const fields = payload as Record<string, unknown>;
  const action = fields.action;
  if (typeof action !== 'string' || !INVOKE_ACTIONS.includes(action as InvokeAction)) {
    throw new ValidationError('payload.action', action, `must be one of ${INVOKE_ACTIONS.join(', ')}`);
  }
  const allowed = ALLOWED_FIELDS[action as InvokeAction];
  for (const key of Object.keys(fields)) {
    if (key !== 'action' && !allowed.includes(key)) {
      const accepted = allowed.length === 0 ? 'no other fields' : allowed.join(', ');
      throw new ValidationError(`payload.${key}`, fields[key], `is not a field of action "${action}", which accepts ${accepted}`);
    }
  }

  const optionalInteger = (key: string): number | undefined => {
    const value = fields[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
      throw new ValidationError(`payload.${key}`, value, 'must be a positive integer');
    }
    return value;
  };
  const optionalString = (key: string): string | undefined => {
    const value = fields[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || value.length === 0 || value.length > 255) {
      throw new ValidationError(`payload.${key}`, value, 'must be a non-empty string of at most 255 characters');
    }
    return value;
  };
  const optionalStrings = (key: string): string[] | undefined => {
    const value = fields[key];
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || value.length === 0 || value.length > 10_000) {
      throw new ValidationError(`payload.${key}`, value, 'must be a non-empty array of at most 10000 strings');
    }
    return value.map((item, position) => {
      if ((typeof item !== 'string' && typeof item !== 'number') || String(item).length === 0) {
        throw new ValidationError(`payload.${key}[${position}]`, item, 'must be a non-empty string or a number');
      }
      return String(item);
    });
  };

  switch (action as InvokeAction) {
    case 'drain':
      return withoutUndefined({ action: 'drain', batchSize: optionalInteger('batchSize'), maxBatches: optionalInteger('maxBatches') });
    case 'rebuild': {
      const restart = fields.restart;
      if (restart !== undefined && typeof restart !== 'boolean') {
        throw new ValidationError('payload.restart', restart, 'must be true or false');
      }
      return withoutUndefined({
        action: 'rebuild',
        objectTypes: optionalStrings('objectTypes'),
        schema: optionalString('schema'),
        chunkSize: optionalInteger('chunkSize'),
        restart,
      });
    }
    case 'status':
      return { action: 'status' };
    case 'retry':
      return withoutUndefined({ action: 'retry', objectType: optionalString('objectType'), objectIds: optionalStrings('objectIds') });
  }
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, field]) => field !== undefined)) as T;
}
