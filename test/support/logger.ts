import type { Logger } from '@search-outbox/core';

/** One line written to a capturing logger. */
export interface LogLine {
  readonly level: string;
  readonly message: string;
  readonly attributes: Record<string, unknown> | undefined;
}

/** Creates a logger that appends every line to `lines`, so tests can assert on what was logged. */
export function capturingLogger(lines: LogLine[]): Logger {
  const capture = (level: string) => (message: string, attributes?: Record<string, unknown>) => {
    lines.push({ level, message, attributes });
  };
  return { debug: capture('debug'), info: capture('info'), warn: capture('warn'), error: capture('error') };
}
