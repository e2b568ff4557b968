import { IndexDeclarationError, ValidationError } from '@search-outbox/core';
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
