import { ValidationError } from './errors.js';

/** Structured attributes attached to a log line: ids, counts, durations. */
export type LogAttributes = Record<string, unknown>;

/**
 * The logger search-outbox writes to. Its shape matches the Powertools for
 * AWS Lambda logger and is easy to adapt to pino or console.
 */
export interface Logger {
  debug(message: string, attributes?: LogAttributes): void;
  info(message: string, attributes?: LogAttributes): void;
  warn(message: string, attributes?: LogAttributes): void;
  error(message: string, attributes?: LogAttributes): void;
}

/** A logger that drops every line: the default, because libraries never print. */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};

const LOG_METHODS = ['debug', 'info', 'warn', 'error'] as const;

/** Checks that `logger` has the four log methods and returns it, or the silent logger when it is undefined. */
export function validateLogger(logger: unknown, path = 'logger'): Logger {
  if (logger === undefined) return silentLogger;
  const missing = LOG_METHODS.filter((method) => typeof (logger as Record<string, unknown> | null)?.[method] !== 'function');
  if (typeof logger !== 'object' || logger === null || missing.length > 0) {
    throw new ValidationError(path, logger, `must be an object with the methods ${LOG_METHODS.join(', ')}`);
  }
  return logger as Logger;
}
