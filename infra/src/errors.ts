/** Base class of every error that the search-outbox CDK constructs raise on purpose. */
export class SearchOutboxInfraError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A construct prop is invalid. `prop` names the prop (with its path, such as
 * `database.port`), `value` is what was given, and the message states the rule.
 */
export class ValidationError extends SearchOutboxInfraError {
  readonly prop: string;
  readonly value: unknown;

  /** `shownValue` replaces the formatted value in the message, for values such as durations that read better with a unit. */
  constructor(prop: string, value: unknown, rule: string, shownValue?: string) {
    super(`Invalid ${prop}: ${shownValue ?? describeValue(value)} ${rule}`);
    this.prop = prop;
    this.value = value;
  }
}

/** Formats a prop value for an error message, cutting long values so messages stay readable. */
function describeValue(value: unknown): string {
  if (typeof value === 'string') {
    return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}... (${value.length} characters)` : value);
  }
  if (typeof value === 'number' || typeof value === 'boolean' || value === undefined || value === null) {
    return String(value);
  }
  try {
    const json = JSON.stringify(value);
    if (json === undefined) return String(value);
    return json.length > 80 ? `${json.slice(0, 80)}...` : json;
  } catch {
    return String(value);
  }
}
