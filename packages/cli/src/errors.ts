import { describeValue, IndexDeclarationError, ValidationError } from '@search-outbox/core';
import { CommanderError } from 'commander';

/** Exit codes of `search-outbox`. */
export const EXIT_SUCCESS = 0;
/** The command ran but did not succeed: a database error, a failed migration, objects that failed to drain. */
export const EXIT_FAILURE = 1;
/** Invalid usage or input: an unknown option, an invalid value, a missing or invalid configuration. */
export const EXIT_USAGE = 2;

/** Invalid usage that the CLI itself detects, such as a missing configuration file. */
export class UsageError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UsageError';
  }
}

/** Returns the exit code for an error that ended a command. */
export function exitCodeOf(error: unknown): number {
  if (error instanceof CommanderError) {
    return error.exitCode === 0 ? EXIT_SUCCESS : EXIT_USAGE;
  }
  if (error instanceof UsageError || error instanceof ValidationError || error instanceof IndexDeclarationError) {
    return EXIT_USAGE;
  }
  return EXIT_FAILURE;
}

/**
 * Runs `work` and rethrows a ValidationError of core under the name the user
 * typed. Core names the value by its API path (`id`, `ids[2]`), and `rename`
 * maps such a path to the option (`--id`), or returns undefined to keep the error.
 */
export async function withOptionNames<T>(rename: (path: string) => string | undefined, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (!(error instanceof ValidationError)) throw error;
    const option = rename(error.path);
    if (option === undefined) throw error;
    // ValidationError builds its message as `Invalid <path>: <value> <rule>`, so the rule is what follows that prefix.
    const prefix = `Invalid ${error.path}: ${describeValue(error.value)} `;
    const rule = error.message.startsWith(prefix) ? error.message.slice(prefix.length) : `is invalid: ${error.message}`;
    throw new ValidationError(option, error.value, rule, { cause: error });
  }
}
