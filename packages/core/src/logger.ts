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
