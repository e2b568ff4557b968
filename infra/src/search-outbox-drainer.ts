import { Annotations, ArnFormat, CfnOutput, Duration, type RemovalPolicy, Stack, Tokenization, Validations } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as eventsTargets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as lambdaEventSources from 'aws-cdk-lib/aws-lambda-event-sources';
import * as lambdaNodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as rds from 'aws-cdk-lib/aws-rds';
import type * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import type * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { FUNCTION_KINDS, formatDuration, validateDrainerProps, type DrainerSettings } from './validate-drainer-props.js';

/** The drainer's three functions, named after what triggers them. */
export type DrainerFunctionKind = 'sqs' | 'schedule' | 'invoke';

/**
 * Service name of the drainer's logs and metrics. The handlers of
 * `@search-outbox/lambda` pass this name to Powertools Metrics, which
 * publishes it as the `service` dimension of every metric.
 * NOTE: an application that passes its own `metrics` to
 * `createDrainerHandlers` must give it this service name, or the lag alarm
 * receives no value and fires.
 */
export const DRAINER_SERVICE_NAME = 'search-outbox-drainer';

/** CloudWatch namespace of the drainer's metrics (`OldestPendingAge`, `Rebuilt`, ...). */
export const DRAINER_METRICS_NAMESPACE = 'SearchOutbox';

/**
 * Lambda runtime of the functions. aws-cdk-lib 2.278.0 also defines
 * `NODEJS_26_X`, but its own `NODEJS_LATEST` and the Lambda Node.js runtime
 * list name nodejs24.x as the newest runtime that Lambda runs.
 */
const RUNTIME = lambda.Runtime.NODEJS_24_X;

/** esbuild target that matches {@link RUNTIME}. */
const ESBUILD_TARGET = 'node24';

// esbuild turns a require() of a Node.js built-in inside a bundled CommonJS
// package (pg, for example) into a call of `require`, which an ES module lacks.
const REQUIRE_BANNER =
  "import { createRequire as __bundleCreateRequire } from 'node:module'; const require = __bundleCreateRequire(import.meta.url);";

/**
 * The Lambda Node.js runtimes (18 and later) ship the Amazon RDS CA certificates
 * in this file, and Node.js trusts them only when NODE_EXTRA_CA_CERTS names it.
 */
const LAMBDA_CA_BUNDLE = '/var/runtime/ca-cert.pem';

/** SQS keeps a message 4 days unless the queue sets another retention period. */
const SOURCE_QUEUE_RETENTION_SECONDS = 4 * 24 * 60 * 60;

/** Export names of the drainer's handlers in the entry module. */
export interface DrainerHandlerNames {
  /** Handler of the SQS trigger. @default 'sqsHandler' */
  readonly sqs?: string;
  /** Handler of the EventBridge schedule (the sweep and the lag metrics). @default 'scheduleHandler' */
  readonly schedule?: string;
  /** Handler of direct invocations (drain, rebuild, status, retry). @default 'invokeHandler' */
  readonly invoke?: string;
}

/** The PostgreSQL database (or RDS Proxy) that the drainer connects to. */
export interface DrainerDatabase {
  /** Host name of the database endpoint, or of the proxy endpoint when the drainer connects through RDS Proxy. Sets `DB_HOST`. */
  readonly host: string;
  /** Port of the endpoint, from 1 to 65535. Sets `DB_PORT`. @default 5432 */
  readonly port?: number;
  /** Database name. Sets `DB_NAME`. */
  readonly name: string;
  /** Database user that the drainer signs in as. Sets `DB_USER`, and names the user in `rds-db:connect`. */
  readonly user: string;
  /**
   * The database instance, cluster or proxy that the functions connect to.
   * The construct allows the functions' security groups to reach it on `port`.
   * @default - no security group rule is added; allow the traffic yourself
   */
  readonly connections?: ec2.IConnectable;
  /**
   * The RDS Proxy that `host` points at. With IAM authentication the
   * functions get `rds-db:connect` on this proxy for `user`.
   * @default - no proxy
   */
  readonly proxy?: rds.IDatabaseProxy;
}

/** Password sign-in: the functions read the password from a Secrets Manager secret. */
export interface DrainerSecretCredentials {
  /** Secret whose JSON value has at least a `password` key. Sets `DB_SECRET_ID`; the functions get read access to it. */
  readonly secret: secretsmanager.ISecret;
  readonly iamAuthentication?: never;
  readonly resourceId?: never;
}

/** IAM database authentication: the functions sign in with an RDS IAM token. */
export interface DrainerIamCredentials {
  /** Sets `DB_IAM_AUTH=true`. */
  readonly iamAuthentication: true;
  /**
   * Resource id of the database instance (`db-...`), Aurora cluster
   * (`cluster-...`) or RDS Proxy (`prx-...`), used in the `rds-db:connect`
   * permission. Required unless `database.proxy` is given, and not allowed
   * together with it.
   * @default - taken from `database.proxy`
   */
  readonly resourceId?: string;
  readonly secret?: never;
}

/** Database sign-in of the drainer: exactly one of a secret and IAM authentication. */
export type DrainerCredentials = DrainerSecretCredentials | DrainerIamCredentials;

/** Props of {@link SearchOutboxDrainer}. */
export interface SearchOutboxDrainerProps {
  /**
   * The application's Lambda entry module, which exports the drainer's three
   * handlers (see `handlers`), or a directory that contains it as
   * `handler.ts`, `handler.mts`, `handler.js`, `handler.mjs` or `index.*`
   * with the same extensions, looked for in that order. A relative path
   * resolves against the current working directory.
   */
  readonly entry: string;
  /** Export names of the handlers in `entry`. @default - `sqsHandler`, `scheduleHandler` and `invokeHandler` */
  readonly handlers?: DrainerHandlerNames;
  /**
   * The lock file (package-lock.json, yarn.lock, pnpm-lock.yaml or bun.lockb)
   * of the project that contains `entry`.
   * @default - the lock file found nearest above `entry`
   */
  readonly depsLockFilePath?: string;
  /**
   * Root directory of the project that `entry` belongs to, in which esbuild runs.
   * @default - the directory of `depsLockFilePath`
   */
  readonly projectRoot?: string;

  /** VPC of the functions: the database must be reachable from it. */
  readonly vpc: ec2.IVpc;
  /**
   * Subnets of the functions. They need a route to the AWS APIs (Secrets
   * Manager, SQS), through a NAT gateway or VPC endpoints.
   * @default - the VPC's private subnets with egress
   */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /**
   * Security groups of the functions; when given, at least one.
   * @default - one security group is created, with all outbound traffic allowed and no inbound rules
   */
  readonly securityGroups?: ec2.ISecurityGroup[];

  /** The database (or RDS Proxy) that the drainer connects to. */
  readonly database: DrainerDatabase;
  /** Database sign-in: a Secrets Manager secret, or IAM authentication. */
  readonly credentials: DrainerCredentials;
  /**
   * TLS to the database: `require` encrypts without checking the certificate,
   * `verify-full` also checks it against the Amazon RDS certificate bundle of
   * the Lambda runtime (`NODE_EXTRA_CA_CERTS=/var/runtime/ca-cert.pem`).
   * Sets `DB_SSL`. Unencrypted connections are not offered.
   * @default 'verify-full'
   */
  readonly ssl?: 'require' | 'verify-full';
  /** Schema of the outbox tables (letters, digits, underscores; at most 63 characters). Sets `SEARCH_OUTBOX_SCHEMA`. @default - `search_outbox`, the drainer's default */
  readonly outboxSchema?: string;
  /** Schema of the search cache that `rebuild` writes unless its payload names one (same rule as `outboxSchema`). Sets `SEARCH_OUTBOX_CACHE_SCHEMA`. @default - `public`, the drainer's default */
  readonly cacheSchema?: string;

  /** Interval of the scheduled sweep, a whole number of minutes from 1 minute to 1 day. @default Duration.minutes(5) */
  readonly scheduleRate?: Duration;
  /**
   * SQS messages per invocation of the sqs function, from 1 to 10000. Above
   * 10, SQS requires `maxBatchingWindow` of at least 1 second.
   * @default 10
   */
  readonly batchSize?: number;
  /** Time SQS gathers messages before it invokes the sqs function, whole seconds up to 5 minutes. @default - none: SQS invokes as soon as messages arrive */
  readonly maxBatchingWindow?: Duration;
  /**
   * Maximum concurrent invocations of the sqs function by the SQS event
   * source, from 2 to 1000 (the AWS limits). Each instance opens its own
   * database connections, so this caps the drainer's connections from SQS.
   * @default 2
   */
  readonly maxConcurrency?: number;
  /** Timeout of each function, whole seconds from 1 second to 15 minutes. @default Duration.seconds(60) */
  readonly timeout?: Duration;
  /** Memory of each function in MB, an integer from 128 to 10240. @default 512 */
  readonly memorySize?: number;
  /** Outbox rows per drain batch, from 1 to 10000. Sets `SEARCH_OUTBOX_BATCH_SIZE`. @default - 500, the drainer's default */
  readonly drainBatchSize?: number;

  /**
   * Visibility timeout of the queue, whole seconds from 6 times `timeout` to
   * 12 hours. AWS recommends at least six times the function timeout, so a
   * message survives retries of a throttled or failed invocation before it
   * becomes visible again.
   * @default - 6 times `timeout` (90 minutes when `timeout` is an unresolved token)
   */
  readonly visibilityTimeout?: Duration;
  /** Receives of a message before SQS moves it to the dead-letter queue, from 1 to 1000. @default 5 */
  readonly maxReceiveCount?: number;
  /**
   * Retention period of the dead-letter queue, whole seconds from 1 minute to
   * 14 days. SQS keeps a message's original enqueue time when it moves it, so a
   * period shorter than the queue's 4 days can expire messages on arrival (synthesis
   * then adds a warning).
   * @default Duration.days(14)
   */
  readonly deadLetterRetention?: Duration;

  /**
   * The lag alarm fires when the age of the oldest pending outbox row, as the
   * scheduled sweep publishes it, exceeds this. Whole seconds, at least 1 second.
   * @default Duration.minutes(15)
   */
  readonly oldestPendingAgeThreshold?: Duration;
  /** Each function's errors alarm fires at this many errors in 5 minutes, an integer of at least 1. @default 1 */
  readonly errorsThreshold?: number;
  /** Each function's throttles alarm fires at this many throttled invocations in 5 minutes, an integer of at least 1. @default 1 */
  readonly throttlesThreshold?: number;
  /** Topic that receives every alarm's ALARM and OK notifications. @default - no alarm actions */
  readonly alarmTopic?: sns.ITopic;

  /** Retention of each function's log group. @default logs.RetentionDays.ONE_MONTH */
  readonly logRetention?: logs.RetentionDays;
  /**
   * Removal policy of the queues and log groups:
   * `RETAIN`, `RETAIN_ON_UPDATE_OR_DELETE` or `DESTROY` (`SNAPSHOT` does not
   * apply to them).
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
  /**
   * Extra environment variables of every function, such as `DB_POOL_MAX`. A
   * variable that the construct sets itself (`DB_HOST`, ...) is rejected: use
   * the matching prop.
   * @default - none
   */
  readonly environment?: Record<string, string>;
}

/** The alarms that {@link SearchOutboxDrainer} creates. */
export interface SearchOutboxDrainerAlarms {
  /** The dead-letter queue contains at least one message: a nudge failed `maxReceiveCount` times. */
  readonly deadLetterQueueNotEmpty: cloudwatch.Alarm;
  /**
   * The oldest pending outbox row is older than `oldestPendingAgeThreshold`,
   * or the sweep published no age. Right after the first deployment it may fire
   * until the first scheduled sweep has run.
   */
  readonly oldestPendingAge: cloudwatch.Alarm;
  /** Per function: errors reached `errorsThreshold` in 5 minutes. */
  readonly errors: Readonly<Record<DrainerFunctionKind, cloudwatch.Alarm>>;
  /** Per function: throttles reached `throttlesThreshold` in 5 minutes. */
  readonly throttles: Readonly<Record<DrainerFunctionKind, cloudwatch.Alarm>>;
}

/**
 * Deploys the search-outbox drainer next to an RDS or Aurora PostgreSQL
 * database: an SQS queue with its dead-letter queue, three Lambda functions
 * (SQS trigger, EventBridge schedule, direct invocation) bundled from the
 * application's entry with the locally installed esbuild, and CloudWatch
 * alarms on the dead-letter queue, the outbox lag and the functions.
 *
 * @example
 * const drainer = new SearchOutboxDrainer(this, 'Drainer', {
 *   entry: 'src/lambda/handler.ts',
 *   vpc,
 *   database: { host: proxy.endpoint, name: 'app', user: 'drainer', connections: proxy, proxy },
 *   credentials: { iamAuthentication: true },
 * });
 * drainer.grantEnqueue(appFunction);
 * appFunction.addEnvironment('SEARCH_OUTBOX_QUEUE_URL', drainer.queueUrl);
 */
export class SearchOutboxDrainer extends Construct implements ec2.IConnectable {
  /** Queue of the nudges that the application sends after each commit. */
  readonly queue: sqs.Queue;
  /** Queue of the nudges that failed `maxReceiveCount` times. */
  readonly deadLetterQueue: sqs.Queue;
  /** URL of `queue`: the application's `SEARCH_OUTBOX_QUEUE_URL`. */
  readonly queueUrl: string;
  /** Function triggered by `queue`. */
  readonly sqsFunction: lambdaNodejs.NodejsFunction;
  /** Function triggered by the EventBridge schedule: the sweep, and the lag metrics. */
  readonly scheduleFunction: lambdaNodejs.NodejsFunction;
  /** Function for on-demand drains, rebuilds, status reads and retries. */
  readonly invokeFunction: lambdaNodejs.NodejsFunction;
  /** The created security group, or the first of `securityGroups` when given. */
  readonly securityGroup: ec2.ISecurityGroup;
  /** Network connections of the functions (all their security groups). */
  readonly connections: ec2.Connections;
  /** EventBridge rule that runs the sweep at `scheduleRate`. */
  readonly scheduleRule: events.Rule;
  readonly alarms: SearchOutboxDrainerAlarms;

  constructor(scope: Construct, id: string, props: SearchOutboxDrainerProps) {
    super(scope, id);
    const settings = validateDrainerProps(props);
    warnAboutShortDeadLetterRetention(this, settings.deadLetterRetention);

    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: settings.deadLetterRetention,
      removalPolicy: settings.removalPolicy,
    });
    this.queue = new sqs.Queue(this, 'Queue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      visibilityTimeout: settings.visibilityTimeout,
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: settings.maxReceiveCount },
      removalPolicy: settings.removalPolicy,
    });
    this.queueUrl = this.queue.queueUrl;

    const securityGroups = props.securityGroups ?? [
      new ec2.SecurityGroup(this, 'SecurityGroup', {
        vpc: props.vpc,
        description: 'search-outbox drainer functions',
        allowAllOutbound: true,
      }),
    ];
    this.securityGroup = securityGroups[0] as ec2.ISecurityGroup;
    this.connections = new ec2.Connections({ securityGroups });
    props.database.connections?.connections.allowFrom(
      this.connections,
      ec2.Port.tcp(settings.port),
      'search-outbox drainer functions to the database',
    );

    const environment = drainerEnvironment(props, settings);
    const createFunction = (kind: DrainerFunctionKind, extraEnvironment: Record<string, string> = {}) =>
      this.createFunction(kind, props, settings, { ...environment, ...extraEnvironment });
    // A drain that stops at the deadline with rows left sends a follow-up
    // nudge. Only the sqs function gets the queue URL, and the permission to
    // send, because the schedule and invoke functions leave the rest to the next sweep.
    this.sqsFunction = createFunction('sqs', { SEARCH_OUTBOX_QUEUE_URL: this.queue.queueUrl });
    this.scheduleFunction = createFunction('schedule');
    this.invokeFunction = createFunction('invoke');
    const functions = this.functionsByKind();

    for (const fn of Object.values(functions)) grantDatabaseAccess(this, fn, props);
    this.queue.grantSendMessages(this.sqsFunction);

    // The event source grants the sqs function the receive, delete and
    // attribute reads of `queue`.
    this.sqsFunction.addEventSource(
      new lambdaEventSources.SqsEventSource(this.queue, {
        batchSize: settings.batchSize,
        maxBatchingWindow: props.maxBatchingWindow,
        maxConcurrency: settings.maxConcurrency,
        reportBatchItemFailures: true,
      }),
    );

    this.scheduleRule = new events.Rule(this, 'ScheduleRule', {
      description: 'Runs the search-outbox sweep: drains what no nudge announced and publishes the lag metrics',
      schedule: events.Schedule.rate(settings.scheduleRate),
      targets: [new eventsTargets.LambdaFunction(this.scheduleFunction)],
    });

    this.alarms = this.createAlarms(settings, functions, props.alarmTopic);

    new CfnOutput(this, 'QueueUrl', {
      description: 'SQS queue of the search-outbox nudges: set it as SEARCH_OUTBOX_QUEUE_URL in the application',
      value: this.queue.queueUrl,
    });
    new CfnOutput(this, 'DeadLetterQueueUrl', {
      description: 'Dead-letter queue of the search-outbox nudges',
      value: this.deadLetterQueue.queueUrl,
    });
    new CfnOutput(this, 'InvokeFunctionName', {
      description: 'Function to invoke for an on-demand drain, rebuild, status or retry',
      value: this.invokeFunction.functionName,
    });

    this.acknowledgeNagFindings();
  }

  /**
   * Acknowledges the cdk-nag AwsSolutions findings about the functions this
   * construct creates, each with its reason, so that every stack using the
   * construct need not repeat them.
   */
  private acknowledgeNagFindings(): void {
    Validations.of(this).acknowledge({
      id: `AwsSolutions-IAM4[Policy::${managedPolicyArn('service-role/AWSLambdaBasicExecutionRole')}]`,
      reason:
        'aws-cdk-lib attaches this AWS managed policy to every Lambda role; it allows only creating log groups and streams and putting log events. ' +
        'An inline policy scoped to the three function log groups would be narrower.',
    });
    Validations.of(this).acknowledge({
      id: `AwsSolutions-IAM4[Policy::${managedPolicyArn('service-role/AWSLambdaVPCAccessExecutionRole')}]`,
      reason:
        'Lambda needs this AWS managed policy to attach functions to the VPC: it allows creating, describing and deleting network interfaces, ' +
        'which IAM supports only on all resources, so a customer managed policy would grant the same.',
    });
    Validations.of(this).acknowledge({
      id: 'AwsSolutions-L1',
      reason:
        'The functions run nodejs24.x, which aws-cdk-lib 2.278.0 names Runtime.NODEJS_LATEST, the newest Node.js runtime available in all regions. ' +
        'The rule compares against the highest runtime that aws-cdk-lib defines (nodejs26.x), which is not available in all regions.',
    });
  }

  /** Allows `grantee` to send nudges to the drainer's queue (`sqs:SendMessage` and the calls it needs). */
  grantEnqueue(grantee: iam.IGrantable): iam.Grant {
    return this.queue.grantSendMessages(grantee);
  }

  private functionsByKind(): Record<DrainerFunctionKind, lambdaNodejs.NodejsFunction> {
    return { sqs: this.sqsFunction, schedule: this.scheduleFunction, invoke: this.invokeFunction };
  }

  private createFunction(
    kind: DrainerFunctionKind,
    props: SearchOutboxDrainerProps,
    settings: DrainerSettings,
    environment: Record<string, string>,
  ): lambdaNodejs.NodejsFunction {
    const name = capitalize(kind);
    const logGroup = new logs.LogGroup(this, `${name}FunctionLogGroup`, {
      retention: settings.logRetention,
      removalPolicy: settings.removalPolicy,
    });

    return new lambdaNodejs.NodejsFunction(this, `${name}Function`, {
      description: `search-outbox drainer: ${FUNCTION_DESCRIPTIONS[kind]}`,
      entry: settings.entry,
      handler: settings.handlers[kind],
      depsLockFilePath: props.depsLockFilePath,
      projectRoot: props.projectRoot,
      runtime: RUNTIME,
      architecture: lambda.Architecture.ARM_64,
      memorySize: settings.memorySize,
      timeout: settings.timeout,
      vpc: props.vpc,
      vpcSubnets: props.vpcSubnets ?? { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      securityGroups: this.connections.securityGroups,
      environment,
      logGroup,
      bundling: {
        format: lambdaNodejs.OutputFormat.ESM,
        target: ESBUILD_TARGET,
        // The ES module builds of the AWS SDK and of other dual packages tree-shake better.
        mainFields: ['module', 'main'],
        banner: REQUIRE_BANNER,
        minify: true,
        sourceMap: true,
        // Lambda reports an error's class name as errorType, and minified class names would read "_".
        keepNames: true,
        // The AWS SDK is bundled, so the functions run the SDK version the
        // application was tested with, not the one the runtime ships. pg
        // loads pg-native only for pg.native, which the drainer never uses.
        externalModules: ['pg-native'],
        forceDockerBundling: false,
        logLevel: lambdaNodejs.LogLevel.WARNING,
      },
    });
  }

  private createAlarms(
    settings: DrainerSettings,
    functions: Record<DrainerFunctionKind, lambdaNodejs.NodejsFunction>,
    alarmTopic: sns.ITopic | undefined,
  ): SearchOutboxDrainerAlarms {
    const fiveMinutes = Duration.minutes(5);

    const deadLetterQueueNotEmpty = new cloudwatch.Alarm(this, 'DeadLetterQueueNotEmptyAlarm', {
      alarmDescription:
        'search-outbox: nudges reached the dead-letter queue after repeated failures of the sqs function. ' +
        'Check its logs and errors alarm; the outbox rows stay pending and the sweep drains them once the cause is fixed.',
      metric: this.deadLetterQueue.metricApproximateNumberOfMessagesVisible({
        period: fiveMinutes,
        statistic: cloudwatch.Stats.MAXIMUM,
      }),
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 1,
      // SQS may publish no value for an inactive queue, and an inactive
      // dead-letter queue received no message.
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });

    const oldestPendingAge = new cloudwatch.Alarm(this, 'OldestPendingAgeAlarm', {
      alarmDescription:
        'search-outbox: the oldest pending outbox row is older than the threshold, or the scheduled sweep published no age. ' +
        'Check the schedule function (errors, logs) and the database; invoke the drain on demand to catch up.',
      metric: new cloudwatch.Metric({
        namespace: DRAINER_METRICS_NAMESPACE,
        metricName: 'OldestPendingAge',
        dimensionsMap: { service: DRAINER_SERVICE_NAME },
        statistic: cloudwatch.Stats.MAXIMUM,
        period: lagAlarmPeriod(settings.scheduleRate),
      }),
      threshold: settings.oldestPendingAgeThreshold.toSeconds(),
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      evaluationPeriods: 1,
      // Every successful sweep publishes the age (0 when nothing is pending),
      // so a period without a value means the sweep did not run or failed,
      // which is when the lag grows unseen.
      treatMissingData: cloudwatch.TreatMissingData.BREACHING,
    });

    const errors = {} as Record<DrainerFunctionKind, cloudwatch.Alarm>;
    const throttles = {} as Record<DrainerFunctionKind, cloudwatch.Alarm>;
    for (const kind of FUNCTION_KINDS) {
      const name = capitalize(kind);
      const fn = functions[kind];
      errors[kind] = new cloudwatch.Alarm(this, `${name}FunctionErrorsAlarm`, {
        alarmDescription: `search-outbox: the ${kind} function failed. Check its log group for the error.`,
        metric: fn.metricErrors({ period: fiveMinutes, statistic: cloudwatch.Stats.SUM }),
        threshold: settings.errorsThreshold,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        // Lambda publishes no Errors value for a period without invocations.
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      throttles[kind] = new cloudwatch.Alarm(this, `${name}FunctionThrottlesAlarm`, {
        alarmDescription:
          `search-outbox: invocations of the ${kind} function were throttled. ` +
          'Check the account and reserved concurrency of the region.',
        metric: fn.metricThrottles({ period: fiveMinutes, statistic: cloudwatch.Stats.SUM }),
        threshold: settings.throttlesThreshold,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
    }

    const alarms: SearchOutboxDrainerAlarms = { deadLetterQueueNotEmpty, oldestPendingAge, errors, throttles };
    if (alarmTopic !== undefined) {
      const action = new cloudwatchActions.SnsAction(alarmTopic);
      for (const alarm of [deadLetterQueueNotEmpty, oldestPendingAge, ...Object.values(errors), ...Object.values(throttles)]) {
        alarm.addAlarmAction(action);
        alarm.addOkAction(action);
      }
    }
    return alarms;
  }
}

const FUNCTION_DESCRIPTIONS: Readonly<Record<DrainerFunctionKind, string>> = {
  sqs: 'drains the outbox when a nudge arrives on the queue',
  schedule: 'scheduled sweep of the outbox, and the lag metrics',
  invoke: 'on-demand drain, rebuild, status and retry',
};

function capitalize(kind: DrainerFunctionKind): string {
  return kind.charAt(0).toUpperCase() + kind.slice(1);
}

/** Builds the environment shared by the three functions; see `ENVIRONMENT_VARIABLES` of `@search-outbox/lambda`. */
function drainerEnvironment(props: SearchOutboxDrainerProps, settings: DrainerSettings): Record<string, string> {
  const environment: Record<string, string> = {
    DB_HOST: props.database.host,
    DB_PORT: Tokenization.stringifyNumber(settings.port),
    DB_NAME: props.database.name,
    DB_USER: props.database.user,
    DB_SSL: settings.ssl,
    POWERTOOLS_SERVICE_NAME: DRAINER_SERVICE_NAME,
    POWERTOOLS_METRICS_NAMESPACE: DRAINER_METRICS_NAMESPACE,
    // Stack traces point into the TypeScript sources through the bundle's source map.
    NODE_OPTIONS: '--enable-source-maps',
  };
  if (settings.ssl === 'verify-full') environment.NODE_EXTRA_CA_CERTS = LAMBDA_CA_BUNDLE;
  if (isSecretCredentials(props.credentials)) {
    environment.DB_SECRET_ID = props.credentials.secret.secretArn;
  } else {
    environment.DB_IAM_AUTH = 'true';
  }
  if (props.outboxSchema !== undefined) environment.SEARCH_OUTBOX_SCHEMA = props.outboxSchema;
  if (props.cacheSchema !== undefined) environment.SEARCH_OUTBOX_CACHE_SCHEMA = props.cacheSchema;
  if (props.drainBatchSize !== undefined) {
    environment.SEARCH_OUTBOX_BATCH_SIZE = Tokenization.stringifyNumber(props.drainBatchSize);
  }
  return { ...environment, ...props.environment };
}

function isSecretCredentials(credentials: DrainerCredentials): credentials is DrainerSecretCredentials {
  return credentials.secret !== undefined;
}

/** Grants `fn` the right to sign in: read access to the secret, or `rds-db:connect` for the user. */
function grantDatabaseAccess(scope: Construct, fn: lambda.IFunction, props: SearchOutboxDrainerProps): void {
  const { credentials, database } = props;
  if (isSecretCredentials(credentials)) {
    credentials.secret.grantRead(fn);
    return;
  }

  if (database.proxy !== undefined) {
    database.proxy.grantConnect(fn, database.user);
    return;
  }
  const stack = Stack.of(scope);
  fn.addToRolePolicy(
    new iam.PolicyStatement({
      actions: ['rds-db:connect'],
      resources: [
        stack.formatArn({
          service: 'rds-db',
          resource: 'dbuser',
          resourceName: `${credentials.resourceId as string}/${database.user}`,
          arnFormat: ArnFormat.COLON_RESOURCE_NAME,
        }),
      ],
    }),
  );
}

/**
 * Period of the lag alarm: twice the schedule rate, at most 1 day, so that
 * one sweep that starts late does not leave a period without a value (a
 * missing value counts as breaching).
 */
function lagAlarmPeriod(scheduleRate: Duration): Duration {
  if (scheduleRate.isUnresolved()) return scheduleRate;
  return Duration.minutes(Math.min(2 * scheduleRate.toMinutes(), 24 * 60));
}

function warnAboutShortDeadLetterRetention(scope: Construct, retention: Duration): void {
  if (retention.isUnresolved() || retention.toSeconds() >= SOURCE_QUEUE_RETENTION_SECONDS) return;
  Annotations.of(scope).addWarningV2(
    '@search-outbox/infra:shortDeadLetterRetention',
    `deadLetterRetention of ${formatDuration(retention)} is shorter than the queue's retention of 4 days. ` +
      'SQS keeps the original enqueue time of a moved message, so messages older than the retention expire as they arrive.',
  );
}

/** ARN of an AWS managed policy as cdk-nag prints it in a finding id. */
function managedPolicyArn(name: string): string {
  return `arn:<AWS::Partition>:iam::aws:policy/${name}`;
}
