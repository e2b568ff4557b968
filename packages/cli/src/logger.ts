import type { LogAttributes, Logger } from '@search-outbox/core';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/**
 * Creates a logger that writes one line per entry to `stream`: level,
 * message, then the attributes as JSON. The CLI passes stderr, so stdout
 * carries only the command's output. Entries below `level` are dropped.
 */
export function createStreamLogger(stream: { write(text: string): unknown }, level: LogLevel): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const write = (entryLevel: LogLevel) => (message: string, attributes?: LogAttributes) => {
    if (LOG_LEVELS.indexOf(entryLevel) < threshold) return;
    const suffix = attributes === undefined || Object.keys(attributes).length === 0 ? '' : ` ${safeJson(attributes)}`;
    stream.write(`${entryLevel}: ${message}${suffix}\n`);
  };
  return { debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}

function safeJson(attributes: LogAttributes): string {
  try {
    return JSON.stringify(attributes, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
  } catch {
    return '[attributes not serializable]';
  }
}
