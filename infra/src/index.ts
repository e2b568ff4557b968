export {
  DRAINER_METRICS_NAMESPACE,
  DRAINER_SERVICE_NAME,
  SearchOutboxDrainer,
  type DrainerCredentials,
  type DrainerDatabase,
  type DrainerFunctionKind,
  type DrainerHandlerNames,
  type DrainerIamCredentials,
  type DrainerSecretCredentials,
  type SearchOutboxDrainerAlarms,
  type SearchOutboxDrainerProps,
} from './search-outbox-drainer.js';
export { SearchOutboxInfraError, ValidationError } from './errors.js';
export { EXAMPLE_DATABASE_NAME, EXAMPLE_DRAINER_USER, EXAMPLE_ENTRY, ExampleStack, type ExampleStackProps } from './example-stack.js';
