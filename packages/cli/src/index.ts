export { loadConfig, DEFAULT_CONFIG_FILES, type CliConfig, type ConfigSource } from './config.js';
export { readEnvironment, type CliEnvironment } from './environment.js';
export { EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, UsageError } from './errors.js';
export { createStreamLogger, type LogLevel } from './logger.js';
export { runCli } from './program.js';
export type { CliStreams } from './context.js';
