import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { defineIndexes, DEFAULT_OUTBOX_SCHEMA, describeValue, IndexRegistry, type SearchIndex } from '@search-outbox/core';
import { UsageError } from './errors.js';
import { watchEventLoop } from './event-loop.js';
import { isSchemaName, SCHEMA_NAME_RULE } from './options.js';

/** Names of the configuration module looked up in the working directory when none is given. */
export const DEFAULT_CONFIG_FILES = ['search-outbox.config.js', 'search-outbox.config.mjs'] as const;

/**
 * The application settings the CLI needs, exported by the configuration
 * module: `indexes` (required), and optionally `outboxSchema`, `schema` and
 * `cacheSchemas`.
 */
export interface CliConfig {
  /** Path of the module the settings came from, or undefined for the defaults. */
  readonly path: string | undefined;
  readonly indexes: IndexRegistry;
  /** Schema of the outbox. Default: `search_outbox`. */
  readonly outboxSchema: string;
  /** Cache schema of search and rebuild when `--schema` is not given. Default: `public`. */
  readonly schema: string;
  /** Cache schemas that `migrate` creates. Default: `[schema]`. */
  readonly cacheSchemas: readonly string[];
}

export interface ConfigSource {
  /** `--config`. */
  readonly option: string | undefined;
  /** `SEARCH_OUTBOX_CONFIG`. */
  readonly environment: string | undefined;
  readonly cwd: string;
}

/**
 * Finds and imports the configuration module: `--config`, then
 * `SEARCH_OUTBOX_CONFIG`, then the default names in the working directory.
 * With `required` false and no module found, returns the defaults with no
 * indexes (enough for `migrate` and `status`).
 */
export async function loadConfig(source: ConfigSource, required: boolean): Promise<CliConfig> {
  const path = findConfigFile(source, required);
  if (path === undefined) {
    return { path, indexes: defineIndexes([]), outboxSchema: DEFAULT_OUTBOX_SCHEMA, schema: 'public', cacheSchemas: ['public'] };
  }

  return readConfigModule(path, await importConfigModule(path));
}

/**
 * Imports the module at `path`. Throws a UsageError when the import fails,
 * and when it is still pending once the event loop has nothing left to run,
 * because nothing can settle it then.
 */
async function importConfigModule(path: string): Promise<Record<string, unknown>> {
  const loading = import(pathToFileURL(path).href).then(
    (module: Record<string, unknown>) => module,
    (error: unknown) => {
      const reason = error instanceof Error ? error.message : String(error);
      throw new UsageError(`Cannot load the configuration module ${path}: ${reason}`, { cause: error });
    },
  );
  const eventLoop = watchEventLoop();
  const stalled = eventLoop.emptied.then((): never => {
    throw new UsageError(
      `Cannot load the configuration module ${path}: it never finished loading, because its import was still pending ` +
        'when the process had nothing left to run (usually a top-level await on a promise that never settles)',
    );
  });
  try {
    return await Promise.race([loading, stalled]);
  } finally {
    eventLoop.dispose();
  }
}

function findConfigFile(source: ConfigSource, required: boolean): string | undefined {
  const explicit = source.option ?? source.environment;
  if (explicit !== undefined) {
    const path = resolve(source.cwd, explicit);
    if (!existsSync(path)) {
      const origin = source.option !== undefined ? '--config' : 'SEARCH_OUTBOX_CONFIG';
      throw new UsageError(`Configuration file not found: ${path} (from ${origin})`);
    }
    return path;
  }

  const candidates = DEFAULT_CONFIG_FILES.map((name) => resolve(source.cwd, name));
  const found = candidates.find((candidate) => existsSync(candidate));
  if (found === undefined && required) {
    throw new UsageError(
      `No configuration found: neither ${candidates.join(' nor ')} exists. ` +
        'Pass --config <file> or set SEARCH_OUTBOX_CONFIG to a module that exports "indexes" ' +
        '(for the example application: --config packages/example-netbox/search-outbox.config.mjs).',
    );
  }
  return found;
}

function readConfigModule(path: string, module: Record<string, unknown>): CliConfig {
  // Named exports, or the same names on a default-exported object.
  const settings =
    module.indexes === undefined && typeof module.default === 'object' && module.default !== null
      ? (module.default as Record<string, unknown>)
      : module;
  const exported = settings.indexes;

  let indexes: IndexRegistry;
  if (exported instanceof IndexRegistry) {
    indexes = exported;
  } else if (Array.isArray(exported)) {
    indexes = defineIndexes(exported as SearchIndex[]);
  } else {
    throw new UsageError(
      `Invalid configuration ${path}: it must export "indexes", an array of search index declarations or the result of defineIndexes()`,
    );
  }

  const outboxSchema = optionalSchema(path, settings, 'outboxSchema') ?? DEFAULT_OUTBOX_SCHEMA;
  const schema = optionalSchema(path, settings, 'schema') ?? 'public';
  const cacheSchemas = settings.cacheSchemas;
  if (cacheSchemas !== undefined && (!Array.isArray(cacheSchemas) || !cacheSchemas.every((item) => typeof item === 'string'))) {
    throw new UsageError(`Invalid configuration ${path}: "cacheSchemas" must be an array of schema names`);
  }
  (cacheSchemas as string[] | undefined)?.forEach((item, position) => checkSchema(path, `cacheSchemas[${position}]`, item));
  return { path, indexes, outboxSchema, schema, cacheSchemas: (cacheSchemas as string[] | undefined) ?? [schema] };
}

function optionalSchema(path: string, settings: Record<string, unknown>, name: string): string | undefined {
  const value = settings[name];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || value === '') {
    throw new UsageError(`Invalid configuration ${path}: "${name}" must be a non-empty string`);
  }
  return checkSchema(path, name, value);
}

/** Throws a UsageError naming the configuration file and the export unless `value` is a valid schema name. */
function checkSchema(path: string, name: string, value: string): string {
  if (!isSchemaName(value)) {
    throw new UsageError(`Invalid "${name}" in configuration ${path}: ${describeValue(value)} ${SCHEMA_NAME_RULE}`);
  }
  return value;
}
