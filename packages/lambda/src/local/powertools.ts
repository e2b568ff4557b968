import { Logger as PowertoolsLogger } from '@aws-lambda-powertools/logger';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { silentLogger, type Logger } from '@search-outbox/core';

type LogItem = Parameters<PowertoolsLogger['printLog']>[1];
type LogLevelName = 'debug' | 'info' | 'warn' | 'error';

/** Keys that Powertools adds to every log line, left out of the forwarded attributes. */
const STANDARD_KEYS = new Set([
  'level',
  'message',
  'timestamp',
  'service',
  'sampling_rate',
  'xray_trace_id',
  'cold_start',
  'function_arn',
  'function_memory_size',
  'function_name',
  'function_request_id',
]);

/**
 * A Powertools logger that passes each line to a search-outbox `Logger`
 * instead of printing JSON to stdout, so that the drainer's handlers can run
 * inside a CLI or a test. Levels follow Powertools (default `INFO`); `SILENT`
 * drops everything.
 */
export class ForwardingLogger extends PowertoolsLogger {
  // A TypeScript-private field, not #target: the base constructor may print
  // before this class's fields exist, and reading an uninstalled #field throws.
  private readonly target: Logger | undefined;

  constructor(target: Logger, options: ConstructorParameters<typeof PowertoolsLogger>[0] = {}) {
    super({ serviceName: 'search-outbox-drainer', ...options });
    this.target = target;
  }

  protected override printLog(logLevel: number, log: LogItem): void {
    log.prepareForPrint();
    const attributes = log.getAttributes() as Record<string, unknown>;
    const extra: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(attributes)) {
      if (!STANDARD_KEYS.has(key) && value !== undefined) extra[key] = value;
    }
    const message = typeof attributes.message === 'string' ? attributes.message : String(attributes.message);
    this.target?.[levelName(logLevel)](message, extra);
  }

  protected override createLogger(options?: ConstructorParameters<typeof PowertoolsLogger>[0]): PowertoolsLogger {
    return new ForwardingLogger(this.target ?? silentLogger, options);
  }
}

/** Powertools log level thresholds: TRACE 6, DEBUG 8, INFO 12, WARN 16, ERROR 20, CRITICAL 24. */
function levelName(logLevel: number): LogLevelName {
  if (logLevel < 12) return 'debug';
  if (logLevel < 16) return 'info';
  if (logLevel < 20) return 'warn';
  return 'error';
}

/** One flush of the metrics: the CloudWatch embedded metric format document and its metric values by name. */
export interface PublishedMetrics {
  readonly document: ReturnType<Metrics['serializeMetrics']>;
  readonly values: Readonly<Record<string, number>>;
}

export interface ForwardingMetricsOptions {
  /** Default: `SearchOutbox`. */
  readonly namespace?: string;
  /** Default: `search-outbox-drainer`. */
  readonly serviceName?: string;
  /** Receives the warnings of Powertools itself, such as "No application metrics to publish". */
  readonly logger?: Logger;
  /** Receives each flush that has at least one metric. */
  readonly onPublish: (metrics: PublishedMetrics) => void;
}

/**
 * Powertools metrics that hand each flush to `onPublish` instead of printing
 * it to stdout, even when POWERTOOLS_METRICS_DISABLED is set. The document is
 * the one Lambda would write to CloudWatch Logs.
 */
export class ForwardingMetrics extends Metrics {
  readonly #onPublish: (metrics: PublishedMetrics) => void;

  constructor(options: ForwardingMetricsOptions) {
    super({
      namespace: options.namespace ?? 'SearchOutbox',
      serviceName: options.serviceName ?? 'search-outbox-drainer',
      ...(options.logger === undefined ? {} : { logger: options.logger }),
    });
    this.#onPublish = options.onPublish;
  }

  override publishStoredMetrics(): this {
    try {
      if (this.hasStoredMetrics()) {
        const document = this.serializeMetrics();
        this.#onPublish({ document, values: metricValues(document) });
      }
    } finally {
      this.clearMetrics();
      this.clearDimensions();
      this.clearMetadata();
    }
    return this;
  }
}

/** Reads the values of the metrics that an embedded metric format document declares. */
function metricValues(document: ReturnType<Metrics['serializeMetrics']>): Record<string, number> {
  const values: Record<string, number> = {};
  const record = document as unknown as Record<string, unknown>;
  for (const directive of document._aws.CloudWatchMetrics) {
    for (const definition of directive.Metrics) {
      const value = record[definition.Name];
      // A metric added more than once in a flush is an array of values; the sum is reported.
      if (typeof value === 'number') values[definition.Name] = value;
      else if (Array.isArray(value)) values[definition.Name] = value.reduce((sum: number, item) => sum + Number(item), 0);
    }
  }
  return values;
}
