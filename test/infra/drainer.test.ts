import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { App, CfnParameter, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import { SearchOutboxDrainer, ValidationError, type SearchOutboxDrainerProps } from '@search-outbox/infra';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

const REPOSITORY_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ENTRY = join(REPOSITORY_ROOT, 'packages/example-netbox/src/lambda/handler.ts');
const LOCK_FILE = join(REPOSITORY_ROOT, 'package-lock.json');

/** Skips asset bundling in every stack of an app; for stacks whose bundle no test reads. */
const SKIP_BUNDLING = { 'aws:cdk:bundling-stacks': [] };

const HANDLERS = { sqs: 'index.sqsHandler', schedule: 'index.scheduleHandler', invoke: 'index.invokeHandler' } as const;
type FunctionKind = keyof typeof HANDLERS;

const SAVED_ENVIRONMENT = {
  CDK_DOCKER: process.env.CDK_DOCKER,
  CDK_HOME: process.env.CDK_HOME,
  CDK_DISABLE_CLI_TELEMETRY: process.env.CDK_DISABLE_CLI_TELEMETRY,
};

let workDirectory: string;
let dockerCallsFile: string;

interface BaseStack {
  readonly app: App;
  readonly stack: Stack;
  readonly vpc: ec2.Vpc;
  readonly secret: secretsmanager.Secret;
}

/** Creates a stack with a VPC and a database secret, the parts every drainer needs. */
function baseStack(options: { outdir?: string; skipBundling?: boolean } = {}): BaseStack {
  const app = new App({ outdir: options.outdir, context: options.skipBundling === false ? {} : SKIP_BUNDLING });
  const stack = new Stack(app, 'Test');
  const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 1 });
  const secret = new secretsmanager.Secret(stack, 'DatabaseSecret');
  return { app, stack, vpc, secret };
}

function minimalProps(base: BaseStack): SearchOutboxDrainerProps {
  return {
    entry: ENTRY,
    depsLockFilePath: LOCK_FILE,
    projectRoot: REPOSITORY_ROOT,
    vpc: base.vpc,
    database: { host: 'db.example.internal', name: 'app', user: 'drainer' },
    credentials: { secret: base.secret },
  };
}

function logicalId(stack: Stack, construct: { node: { defaultChild?: unknown } }): string {
  return stack.getLogicalId(construct.node.defaultChild as never);
}

/** Returns the one resource of `type` whose properties match `properties`, with its logical id. */
function onlyResource(template: Template, type: string, properties: object): { id: string; resource: any } {
  const found = template.findResources(type, { Properties: properties });
  const ids = Object.keys(found);
  expect(ids).toHaveLength(1);
  const id = ids[0] as string;
  return { id, resource: found[id] };
}

function functionOf(template: Template, kind: FunctionKind): { id: string; resource: any } {
  return onlyResource(template, 'AWS::Lambda::Function', { Handler: HANDLERS[kind] });
}

/** Returns the actions of every statement in the inline policies attached to the role. */
function actionsOfRole(template: Template, roleId: string): string[] {
  const policies = template.findResources('AWS::IAM::Policy', { Properties: { Roles: [{ Ref: roleId }] } });
  return Object.values(policies).flatMap((policy: any) =>
    policy.Properties.PolicyDocument.Statement.flatMap((statement: any) => [statement.Action].flat()),
  );
}

function kindOf(constructId: string): FunctionKind {
  const kind = constructId.replace(/Function$/, '').toLowerCase();
  if (kind !== 'sqs' && kind !== 'schedule' && kind !== 'invoke') throw new Error(`unexpected function id ${constructId}`);
  return kind;
}

function roleOf(functionResource: any): string {
  return functionResource.Properties.Role['Fn::GetAtt'][0];
}

beforeAll(() => {
  workDirectory = mkdtempSync(join(tmpdir(), 'search-outbox-infra-'));
  // CDK runs the program named by CDK_DOCKER for every Docker call. This one
  // records its arguments and fails, so a Docker call shows in the record
  // and cannot succeed.
  dockerCallsFile = join(workDirectory, 'docker-calls.log');
  writeFileSync(dockerCallsFile, '');
  const fakeDocker = join(workDirectory, 'fake-docker.sh');
  writeFileSync(fakeDocker, `#!/bin/sh\necho "docker $*" >> '${dockerCallsFile}'\nexit 1\n`);
  chmodSync(fakeDocker, 0o755);
  process.env.CDK_DOCKER = fakeDocker;
  process.env.CDK_HOME = join(REPOSITORY_ROOT, '.cache/cdk');
  process.env.CDK_DISABLE_CLI_TELEMETRY = '1';
});

afterAll(() => {
  for (const [key, value] of Object.entries(SAVED_ENVIRONMENT)) {
    if (value === undefined) delete process.env[key];
    else process.env[key] = value;
  }
  rmSync(workDirectory, { recursive: true, force: true });
});

describe('SearchOutboxDrainer with a secret, bundled', () => {
  let outdir: string;
  let stack: Stack;
  let template: Template;
  let drainer: SearchOutboxDrainer;
  let ids: {
    queue: string;
    deadLetterQueue: string;
    securityGroup: string;
    databaseSecurityGroup: string;
    secret: string;
    topic: string;
    functions: Record<FunctionKind, string>;
  };

  beforeAll(() => {
    outdir = join(workDirectory, 'cdk.out');
    const base = baseStack({ outdir, skipBundling: false });
    stack = base.stack;
    const databaseSecurityGroup = new ec2.SecurityGroup(stack, 'DatabaseSecurityGroup', { vpc: base.vpc });
    const topic = new sns.Topic(stack, 'AlarmTopic');
    drainer = new SearchOutboxDrainer(stack, 'Drainer', {
      ...minimalProps(base),
      database: { host: 'db.example.internal', port: 5433, name: 'app', user: 'drainer', connections: databaseSecurityGroup },
      outboxSchema: 'outbox',
      cacheSchema: 'search',
      scheduleRate: Duration.minutes(10),
      batchSize: 50,
      maxBatchingWindow: Duration.seconds(30),
      maxConcurrency: 4,
      timeout: Duration.seconds(90),
      memorySize: 1024,
      drainBatchSize: 200,
      maxReceiveCount: 3,
      deadLetterRetention: Duration.days(7),
      oldestPendingAgeThreshold: Duration.minutes(30),
      errorsThreshold: 2,
      throttlesThreshold: 3,
      alarmTopic: topic,
      logRetention: logs.RetentionDays.TWO_WEEKS,
      environment: { DB_POOL_MAX: '3' },
    });
    const applicationRole = new iam.Role(stack, 'ApplicationRole', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
    });
    drainer.grantEnqueue(applicationRole);

    template = Template.fromStack(stack);
    ids = {
      queue: logicalId(stack, drainer.queue),
      deadLetterQueue: logicalId(stack, drainer.deadLetterQueue),
      securityGroup: logicalId(stack, drainer.securityGroup as ec2.SecurityGroup),
      databaseSecurityGroup: logicalId(stack, databaseSecurityGroup),
      secret: logicalId(stack, base.secret),
      topic: logicalId(stack, topic),
      functions: {
        sqs: logicalId(stack, drainer.sqsFunction),
        schedule: logicalId(stack, drainer.scheduleFunction),
        invoke: logicalId(stack, drainer.invokeFunction),
      },
    };
  });

  test('synthesis never calls Docker', () => {
    expect(readFileSync(dockerCallsFile, 'utf8')).toBe('');
  });

  test('bundle asset contains index.mjs with the three handlers', () => {
    const s3Key: string = functionOf(template, 'sqs').resource.Properties.Code.S3Key;
    const assetDirectory = join(outdir, `asset.${s3Key.replace(/\.zip$/, '')}`);
    const bundle = readFileSync(join(assetDirectory, 'index.mjs'), 'utf8');

    expect(existsSync(join(assetDirectory, 'index.mjs.map'))).toBe(true);
    expect(bundle.startsWith("import { createRequire as __bundleCreateRequire } from 'node:module';")).toBe(true);
    for (const name of ['sqsHandler', 'scheduleHandler', 'invokeHandler']) {
      expect(bundle).toMatch(new RegExp(`export\\s*\\{[^}]*\\bas ${name}\\b`));
    }
    // The AWS SDK is bundled, not loaded from the runtime.
    expect(bundle).not.toMatch(/from\s*["']@aws-sdk\//);
  });

  test('the three functions share one bundle', () => {
    const keys = (['sqs', 'schedule', 'invoke'] as const).map((kind) => functionOf(template, kind).resource.Properties.Code.S3Key);
    expect(new Set(keys).size).toBe(1);
  });

  test('queue encryption, visibility and redrive', () => {
    template.resourceCountIs('AWS::SQS::Queue', 2);
    const queue = template.toJSON().Resources[ids.queue];
    expect(queue.Properties).toEqual({
      SqsManagedSseEnabled: true,
      VisibilityTimeout: 540,
      RedrivePolicy: {
        deadLetterTargetArn: { 'Fn::GetAtt': [ids.deadLetterQueue, 'Arn'] },
        maxReceiveCount: 3,
      },
    });
    expect(queue.DeletionPolicy).toBe('Retain');
    expect(queue.UpdateReplacePolicy).toBe('Retain');
  });

  test('dead-letter queue encryption and retention', () => {
    const deadLetterQueue = template.toJSON().Resources[ids.deadLetterQueue];
    expect(deadLetterQueue.Properties).toEqual({ SqsManagedSseEnabled: true, MessageRetentionPeriod: 7 * 24 * 60 * 60 });
    expect(deadLetterQueue.DeletionPolicy).toBe('Retain');
  });

  test('both queues deny requests without TLS', () => {
    for (const queueId of [ids.queue, ids.deadLetterQueue]) {
      template.hasResourceProperties('AWS::SQS::QueuePolicy', {
        Queues: [{ Ref: queueId }],
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({
              Effect: 'Deny',
              Action: 'sqs:*',
              Principal: { AWS: '*' },
              Condition: { Bool: { 'aws:SecureTransport': 'false' } },
              Resource: { 'Fn::GetAtt': [queueId, 'Arn'] },
            }),
          ]),
        },
      });
    }
  });

  test('functions on arm64 and Node.js 24', () => {
    template.resourceCountIs('AWS::Lambda::Function', 3);
    for (const kind of ['sqs', 'schedule', 'invoke'] as const) {
      const { resource } = functionOf(template, kind);
      expect(resource.Properties.Runtime).toBe('nodejs24.x');
      expect(resource.Properties.Architectures).toEqual(['arm64']);
      expect(resource.Properties.MemorySize).toBe(1024);
      expect(resource.Properties.Timeout).toBe(90);
    }
  });

  test('functions use private subnets', () => {
    const privateSubnets = Object.keys(
      template.findResources('AWS::EC2::Subnet', {
        Properties: { Tags: Match.arrayWith([{ Key: 'aws-cdk:subnet-type', Value: 'Private' }]) },
      }),
    );
    expect(privateSubnets).toHaveLength(2);
    for (const kind of ['sqs', 'schedule', 'invoke'] as const) {
      expect(functionOf(template, kind).resource.Properties.VpcConfig).toEqual({
        SecurityGroupIds: [{ 'Fn::GetAtt': [ids.securityGroup, 'GroupId'] }],
        SubnetIds: privateSubnets.map((id) => ({ Ref: id })),
      });
    }
  });

  test('function environment', () => {
    const common = {
      DB_HOST: 'db.example.internal',
      DB_PORT: '5433',
      DB_NAME: 'app',
      DB_USER: 'drainer',
      DB_SSL: 'verify-full',
      NODE_EXTRA_CA_CERTS: '/var/runtime/ca-cert.pem',
      DB_SECRET_ID: { Ref: ids.secret },
      SEARCH_OUTBOX_SCHEMA: 'outbox',
      SEARCH_OUTBOX_CACHE_SCHEMA: 'search',
      SEARCH_OUTBOX_BATCH_SIZE: '200',
      POWERTOOLS_SERVICE_NAME: 'search-outbox-drainer',
      POWERTOOLS_METRICS_NAMESPACE: 'SearchOutbox',
      NODE_OPTIONS: '--enable-source-maps',
      DB_POOL_MAX: '3',
    };
    expect(functionOf(template, 'sqs').resource.Properties.Environment.Variables).toEqual({
      ...common,
      SEARCH_OUTBOX_QUEUE_URL: { Ref: ids.queue },
    });
    expect(functionOf(template, 'schedule').resource.Properties.Environment.Variables).toEqual(common);
    expect(functionOf(template, 'invoke').resource.Properties.Environment.Variables).toEqual(common);
  });

  test('each function logs to its own log group', () => {
    template.resourceCountIs('AWS::Logs::LogGroup', 3);
    const logGroups = template.findResources('AWS::Logs::LogGroup');
    const used = new Set<string>();
    for (const kind of ['sqs', 'schedule', 'invoke'] as const) {
      const logGroupId: string = functionOf(template, kind).resource.Properties.LoggingConfig.LogGroup.Ref;
      used.add(logGroupId);
      expect(logGroups[logGroupId]?.Properties).toEqual({ RetentionInDays: 14 });
      expect(logGroups[logGroupId]?.DeletionPolicy).toBe('Retain');
    }
    expect(used.size).toBe(3);
  });

  test('SQS event source reports batch item failures', () => {
    template.resourceCountIs('AWS::Lambda::EventSourceMapping', 1);
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      FunctionName: { Ref: ids.functions.sqs },
      EventSourceArn: { 'Fn::GetAtt': [ids.queue, 'Arn'] },
      BatchSize: 50,
      MaximumBatchingWindowInSeconds: 30,
      FunctionResponseTypes: ['ReportBatchItemFailures'],
      ScalingConfig: { MaximumConcurrency: 4 },
    });
  });

  test('schedule rule targets the schedule function', () => {
    template.resourceCountIs('AWS::Events::Rule', 1);
    const { id: ruleId } = onlyResource(template, 'AWS::Events::Rule', {
      ScheduleExpression: 'rate(10 minutes)',
      State: 'ENABLED',
      Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [ids.functions.schedule, 'Arn'] } })],
    });
    template.hasResourceProperties('AWS::Lambda::Permission', {
      Action: 'lambda:InvokeFunction',
      FunctionName: { 'Fn::GetAtt': [ids.functions.schedule, 'Arn'] },
      Principal: 'events.amazonaws.com',
      SourceArn: { 'Fn::GetAtt': [ruleId, 'Arn'] },
    });
  });

  test('alarm count and actions', () => {
    const alarms = template.findResources('AWS::CloudWatch::Alarm');
    expect(Object.keys(alarms)).toHaveLength(8);
    for (const alarm of Object.values(alarms) as any[]) {
      expect(alarm.Properties.AlarmActions).toEqual([{ Ref: ids.topic }]);
      expect(alarm.Properties.OKActions).toEqual([{ Ref: ids.topic }]);
    }
  });

  test('dead-letter queue alarm', () => {
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/SQS',
      MetricName: 'ApproximateNumberOfMessagesVisible',
      Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [ids.deadLetterQueue, 'QueueName'] } }],
      Statistic: 'Maximum',
      Period: 300,
      Threshold: 0,
      ComparisonOperator: 'GreaterThanThreshold',
      EvaluationPeriods: 1,
      TreatMissingData: 'notBreaching',
    });
  });

  test('oldest pending age alarm', () => {
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'SearchOutbox',
      MetricName: 'OldestPendingAge',
      Dimensions: [{ Name: 'service', Value: 'search-outbox-drainer' }],
      Statistic: 'Maximum',
      // Twice the schedule rate of 10 minutes.
      Period: 1200,
      Threshold: 1800,
      ComparisonOperator: 'GreaterThanThreshold',
      EvaluationPeriods: 1,
      TreatMissingData: 'breaching',
    });
  });

  test('errors and throttles alarms per function', () => {
    for (const kind of ['sqs', 'schedule', 'invoke'] as const) {
      for (const [metricName, threshold] of [
        ['Errors', 2],
        ['Throttles', 3],
      ] as const) {
        template.hasResourceProperties('AWS::CloudWatch::Alarm', {
          Namespace: 'AWS/Lambda',
          MetricName: metricName,
          Dimensions: [{ Name: 'FunctionName', Value: { Ref: ids.functions[kind] } }],
          Statistic: 'Sum',
          Period: 300,
          Threshold: threshold,
          ComparisonOperator: 'GreaterThanOrEqualToThreshold',
          EvaluationPeriods: 1,
          TreatMissingData: 'notBreaching',
        });
      }
    }
  });

  test('alarms field contains every alarm', () => {
    const alarmIds = [
      drainer.alarms.deadLetterQueueNotEmpty,
      drainer.alarms.oldestPendingAge,
      ...Object.values(drainer.alarms.errors),
      ...Object.values(drainer.alarms.throttles),
    ].map((alarm) => logicalId(stack, alarm));
    expect(new Set(alarmIds)).toEqual(new Set(Object.keys(template.findResources('AWS::CloudWatch::Alarm'))));
  });

  test('each function reads the secret only', () => {
    for (const kind of ['schedule', 'invoke'] as const) {
      const roleId = roleOf(functionOf(template, kind).resource);
      expect(actionsOfRole(template, roleId).sort()).toEqual(['secretsmanager:DescribeSecret', 'secretsmanager:GetSecretValue']);
    }
    template.hasResourceProperties('AWS::IAM::Policy', {
      Roles: [{ Ref: roleOf(functionOf(template, 'schedule').resource) }],
      PolicyDocument: {
        Statement: [
          {
            Effect: 'Allow',
            Action: ['secretsmanager:GetSecretValue', 'secretsmanager:DescribeSecret'],
            Resource: { Ref: ids.secret },
          },
        ],
      },
    });
  });

  test('sqs function consumes and sends to its queue', () => {
    const roleId = roleOf(functionOf(template, 'sqs').resource);
    expect(new Set(actionsOfRole(template, roleId))).toEqual(
      new Set([
        'secretsmanager:DescribeSecret',
        'secretsmanager:GetSecretValue',
        'sqs:ReceiveMessage',
        'sqs:ChangeMessageVisibility',
        'sqs:GetQueueUrl',
        'sqs:DeleteMessage',
        'sqs:GetQueueAttributes',
        'sqs:SendMessage',
      ]),
    );
    const statements = Object.values(
      template.findResources('AWS::IAM::Policy', { Properties: { Roles: [{ Ref: roleId }] } }),
    ).flatMap((policy: any) => policy.Properties.PolicyDocument.Statement);
    for (const statement of statements.filter((s: any) => [s.Action].flat().some((action: string) => action.startsWith('sqs:')))) {
      expect(statement.Resource).toEqual({ 'Fn::GetAtt': [ids.queue, 'Arn'] });
    }
  });

  test('roles use the basic and VPC execution policies', () => {
    for (const kind of ['sqs', 'schedule', 'invoke'] as const) {
      const role = template.toJSON().Resources[roleOf(functionOf(template, kind).resource)];
      const managed = JSON.stringify(role.Properties.ManagedPolicyArns);
      expect(managed).toContain('service-role/AWSLambdaBasicExecutionRole');
      expect(managed).toContain('service-role/AWSLambdaVPCAccessExecutionRole');
    }
  });

  test('inline policies have no wildcard', () => {
    for (const policy of Object.values(template.findResources('AWS::IAM::Policy')) as any[]) {
      for (const statement of policy.Properties.PolicyDocument.Statement) {
        for (const action of [statement.Action].flat()) expect(action).not.toContain('*');
        expect(JSON.stringify(statement.Resource)).not.toMatch(/"\*"/);
      }
    }
  });

  test('grantEnqueue allows sending to the queue', () => {
    const roleId = logicalId(stack, stack.node.findChild('ApplicationRole') as iam.Role);
    template.hasResourceProperties('AWS::IAM::Policy', {
      Roles: [{ Ref: roleId }],
      PolicyDocument: {
        Statement: [
          {
            Effect: 'Allow',
            Action: ['sqs:SendMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'],
            Resource: { 'Fn::GetAtt': [ids.queue, 'Arn'] },
          },
        ],
      },
    });
  });

  test('database admits functions on port', () => {
    template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      IpProtocol: 'tcp',
      FromPort: 5433,
      ToPort: 5433,
      GroupId: { 'Fn::GetAtt': [ids.databaseSecurityGroup, 'GroupId'] },
      SourceSecurityGroupId: { 'Fn::GetAtt': [ids.securityGroup, 'GroupId'] },
    });
  });

  test('created security group has no inbound rules', () => {
    const securityGroup = template.toJSON().Resources[ids.securityGroup];
    expect(securityGroup.Properties.SecurityGroupIngress).toBeUndefined();
    expect(securityGroup.Properties.SecurityGroupEgress).toEqual([
      { CidrIp: '0.0.0.0/0', Description: 'Allow all outbound traffic by default', IpProtocol: '-1' },
    ]);
    template.resourcePropertiesCountIs('AWS::EC2::SecurityGroupIngress', { GroupId: { 'Fn::GetAtt': [ids.securityGroup, 'GroupId'] } }, 0);
  });

  test('outputs', () => {
    const outputs = Object.values(template.findOutputs('*')).map((output: any) => output.Value);
    expect(outputs).toHaveLength(3);
    expect(outputs).toContainEqual({ Ref: ids.queue });
    expect(outputs).toContainEqual({ Ref: ids.deadLetterQueue });
    expect(outputs).toContainEqual({ Ref: ids.functions.invoke });
  });

  test('queueUrl resolves to the queue', () => {
    expect(stack.resolve(drainer.queueUrl)).toEqual({ Ref: ids.queue });
  });
});

describe('SearchOutboxDrainer defaults', () => {
  let template: Template;
  let stack: Stack;

  beforeAll(() => {
    const base = baseStack();
    stack = base.stack;
    new SearchOutboxDrainer(stack, 'Drainer', minimalProps(base));
    template = Template.fromStack(stack);
  });

  test('function settings', () => {
    for (const kind of ['sqs', 'schedule', 'invoke'] as const) {
      const { resource } = functionOf(template, kind);
      expect(resource.Properties.MemorySize).toBe(512);
      expect(resource.Properties.Timeout).toBe(60);
      expect(resource.Properties.Environment.Variables.DB_PORT).toBe('5432');
      expect(resource.Properties.Environment.Variables.DB_SSL).toBe('verify-full');
      expect(resource.Properties.Environment.Variables.NODE_EXTRA_CA_CERTS).toBe('/var/runtime/ca-cert.pem');
      expect(resource.Properties.Environment.Variables.SEARCH_OUTBOX_SCHEMA).toBeUndefined();
      expect(resource.Properties.Environment.Variables.SEARCH_OUTBOX_BATCH_SIZE).toBeUndefined();
    }
  });

  test('queue settings', () => {
    template.hasResourceProperties('AWS::SQS::Queue', {
      VisibilityTimeout: 360,
      RedrivePolicy: Match.objectLike({ maxReceiveCount: 5 }),
    });
    template.hasResourceProperties('AWS::SQS::Queue', { MessageRetentionPeriod: 14 * 24 * 60 * 60 });
  });

  test('event source settings', () => {
    const mapping = Object.values(template.findResources('AWS::Lambda::EventSourceMapping'))[0] as any;
    expect(mapping.Properties.BatchSize).toBe(10);
    expect(mapping.Properties.MaximumBatchingWindowInSeconds).toBeUndefined();
    expect(mapping.Properties.ScalingConfig).toEqual({ MaximumConcurrency: 2 });
  });

  test('schedule every 5 minutes', () => {
    template.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(5 minutes)' });
  });

  test('alarm thresholds and no actions', () => {
    template.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'OldestPendingAge', Threshold: 900, Period: 600 });
    template.resourcePropertiesCountIs('AWS::CloudWatch::Alarm', { MetricName: 'Errors', Threshold: 1 }, 3);
    template.resourcePropertiesCountIs('AWS::CloudWatch::Alarm', { MetricName: 'Throttles', Threshold: 1 }, 3);
    for (const alarm of Object.values(template.findResources('AWS::CloudWatch::Alarm')) as any[]) {
      expect(alarm.Properties.AlarmActions).toBeUndefined();
      expect(alarm.Properties.OKActions).toBeUndefined();
    }
  });

  test('log retention of one month', () => {
    template.resourcePropertiesCountIs('AWS::Logs::LogGroup', { RetentionInDays: 30 }, 3);
  });

  test('no database ingress without connections', () => {
    template.resourceCountIs('AWS::EC2::SecurityGroupIngress', 0);
  });

  test('no warnings', () => {
    Annotations.fromStack(stack).hasNoWarning('*', Match.anyValue());
  });
});

describe('SearchOutboxDrainer with IAM authentication', () => {
  test('resourceId grants rds-db:connect for the user', () => {
    const base = baseStack();
    const drainer = new SearchOutboxDrainer(base.stack, 'Drainer', {
      ...minimalProps(base),
      credentials: { iamAuthentication: true, resourceId: 'cluster-ABCDEFGHIJKLMNOP' },
      ssl: 'require',
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const template = Template.fromStack(base.stack);

    for (const fn of [drainer.sqsFunction, drainer.scheduleFunction, drainer.invokeFunction]) {
      const variables = functionOf(template, kindOf(fn.node.id)).resource.Properties.Environment.Variables;
      expect(variables.DB_IAM_AUTH).toBe('true');
      expect(variables.DB_SECRET_ID).toBeUndefined();
      expect(variables.DB_SSL).toBe('require');
      expect(variables.NODE_EXTRA_CA_CERTS).toBeUndefined();

      const roleId = roleOf(functionOf(template, kindOf(fn.node.id)).resource);
      template.hasResourceProperties('AWS::IAM::Policy', {
        Roles: [{ Ref: roleId }],
        PolicyDocument: {
          Statement: Match.arrayWith([
            {
              Effect: 'Allow',
              Action: 'rds-db:connect',
              Resource: {
                'Fn::Join': [
                  '',
                  [
                    'arn:',
                    { Ref: 'AWS::Partition' },
                    ':rds-db:',
                    { Ref: 'AWS::Region' },
                    ':',
                    { Ref: 'AWS::AccountId' },
                    ':dbuser:cluster-ABCDEFGHIJKLMNOP/drainer',
                  ],
                ],
              },
            },
          ]),
        },
      });
      expect(actionsOfRole(template, roleId).some((action) => action.startsWith('secretsmanager:'))).toBe(false);
    }
  });

  test('proxy grants connect on the proxy', () => {
    const base = baseStack();
    const proxy = rds.DatabaseProxy.fromDatabaseProxyAttributes(base.stack, 'Proxy', {
      dbProxyArn: 'arn:aws:rds:eu-west-1:123456789012:db-proxy:prx-0123456789abcdef0',
      dbProxyName: 'proxy',
      endpoint: 'proxy.example.internal',
      securityGroups: [],
    });
    new SearchOutboxDrainer(base.stack, 'Drainer', {
      ...minimalProps(base),
      database: { host: proxy.endpoint, name: 'app', user: 'drainer', proxy },
      credentials: { iamAuthentication: true },
    });
    const template = Template.fromStack(base.stack);

    const roleId = roleOf(functionOf(template, 'invoke').resource);
    const statements = Object.values(
      template.findResources('AWS::IAM::Policy', { Properties: { Roles: [{ Ref: roleId }] } }),
    ).flatMap((policy: any) => policy.Properties.PolicyDocument.Statement);
    const connect = statements.filter((statement: any) => statement.Action === 'rds-db:connect');
    expect(connect).toHaveLength(1);
    const resource = JSON.stringify(base.stack.resolve(connect[0].Resource));
    expect(resource).toContain(':dbuser:');
    expect(resource).toContain('prx-0123456789abcdef0');
    expect(resource).toContain('/drainer');
  });

});

describe('SearchOutboxDrainer options', () => {
  test('removal policy DESTROY', () => {
    const base = baseStack();
    new SearchOutboxDrainer(base.stack, 'Drainer', { ...minimalProps(base), removalPolicy: RemovalPolicy.DESTROY });
    const template = Template.fromStack(base.stack);

    for (const type of ['AWS::SQS::Queue', 'AWS::Logs::LogGroup']) {
      for (const resource of Object.values(template.findResources(type)) as any[]) {
        expect(resource.DeletionPolicy).toBe('Delete');
      }
    }
  });

  test('given security groups replace the created one', () => {
    const base = baseStack();
    const securityGroup = new ec2.SecurityGroup(base.stack, 'OwnSecurityGroup', { vpc: base.vpc });
    const drainer = new SearchOutboxDrainer(base.stack, 'Drainer', { ...minimalProps(base), securityGroups: [securityGroup] });
    const template = Template.fromStack(base.stack);

    template.resourceCountIs('AWS::EC2::SecurityGroup', 1);
    expect(drainer.securityGroup).toBe(securityGroup);
    expect(functionOf(template, 'sqs').resource.Properties.VpcConfig.SecurityGroupIds).toEqual([
      { 'Fn::GetAtt': [logicalId(base.stack, securityGroup), 'GroupId'] },
    ]);
  });

  test('entry directory resolves to handler.ts', () => {
    const base = baseStack();
    new SearchOutboxDrainer(base.stack, 'Drainer', {
      ...minimalProps(base),
      entry: join(REPOSITORY_ROOT, 'packages/example-netbox/src/lambda'),
    });
    Template.fromStack(base.stack).resourceCountIs('AWS::Lambda::Function', 3);
  });

  test('handler export names are configurable', () => {
    const base = baseStack();
    new SearchOutboxDrainer(base.stack, 'Drainer', {
      ...minimalProps(base),
      handlers: { sqs: 'onMessage', schedule: 'onSchedule', invoke: 'onInvoke' },
    });
    const handlers = Object.values(Template.fromStack(base.stack).findResources('AWS::Lambda::Function')).map(
      (fn: any) => fn.Properties.Handler,
    );
    expect(handlers.sort()).toEqual(['index.onInvoke', 'index.onMessage', 'index.onSchedule']);
  });
});

describe('SearchOutboxDrainer validation', () => {
  let base: BaseStack;
  let counter = 0;

  beforeAll(() => {
    base = baseStack();
  });

  /** Creates a drainer with `overrides` and returns the message of the ValidationError it throws. */
  function validationMessage(overrides: Partial<SearchOutboxDrainerProps> | ((props: SearchOutboxDrainerProps) => SearchOutboxDrainerProps)): string {
    counter += 1;
    const props = typeof overrides === 'function' ? overrides(minimalProps(base)) : { ...minimalProps(base), ...overrides };
    try {
      new SearchOutboxDrainer(base.stack, `Drainer${counter}`, props);
    } catch (error) {
      expect(error).toBeInstanceOf(ValidationError);
      return (error as Error).message;
    }
    throw new Error('expected a ValidationError, but the drainer was created');
  }

  const durationCases: Array<[string, Partial<SearchOutboxDrainerProps>, string]> = [
    [
      'visibility below 6 x timeout',
      { visibilityTimeout: Duration.seconds(120) },
      'Invalid visibilityTimeout: 120 seconds must be at least 6 times timeout (6 x 60 = 360 seconds)',
    ],
    [
      'visibility above 12 hours',
      { visibilityTimeout: Duration.seconds(43_201) },
      'Invalid visibilityTimeout: 43201 seconds must be from 0 seconds to 43200 seconds',
    ],
    ['timeout above 15 minutes', { timeout: Duration.seconds(901) }, 'Invalid timeout: 901 seconds must be from 1 second to 900 seconds'],
    ['timeout in milliseconds', { timeout: Duration.millis(1500) }, 'Invalid timeout: 1500 milliseconds must be a whole number of seconds'],
    ['schedule below 1 minute', { scheduleRate: Duration.seconds(30) }, 'Invalid scheduleRate: 30 seconds must be a whole number of minutes'],
    ['schedule above 1 day', { scheduleRate: Duration.days(2) }, 'Invalid scheduleRate: 172800 seconds must be from 60 seconds to 86400 seconds'],
    [
      'batching window above 5 minutes',
      { maxBatchingWindow: Duration.seconds(301) },
      'Invalid maxBatchingWindow: 301 seconds must be from 0 seconds to 300 seconds',
    ],
    [
      'dead-letter retention below 1 minute',
      { deadLetterRetention: Duration.seconds(30) },
      'Invalid deadLetterRetention: 30 seconds must be from 60 seconds to 1209600 seconds',
    ],
    [
      'dead-letter retention above 14 days',
      { deadLetterRetention: Duration.days(15) },
      'Invalid deadLetterRetention: 1296000 seconds must be from 60 seconds to 1209600 seconds',
    ],
    [
      'age threshold of zero',
      { oldestPendingAgeThreshold: Duration.seconds(0) },
      'Invalid oldestPendingAgeThreshold: 0 seconds must be at least 1 second',
    ],
  ];

  const numberCases: Array<[string, Partial<SearchOutboxDrainerProps>, string]> = [
    ['batch size 0', { batchSize: 0 }, 'Invalid batchSize: 0 must be an integer from 1 to 10000'],
    ['batch size above 10000', { batchSize: 10_001, maxBatchingWindow: Duration.seconds(5) }, 'Invalid batchSize: 10001 must be an integer from 1 to 10000'],
    [
      'batch size 11 without window',
      { batchSize: 11 },
      'Invalid batchSize: 11 needs maxBatchingWindow of at least 1 second (given: none); SQS allows batches above 10 only with a batching window',
    ],
    [
      'batch size 11 with a zero window',
      { batchSize: 11, maxBatchingWindow: Duration.seconds(0) },
      'Invalid batchSize: 11 needs maxBatchingWindow of at least 1 second (given: 0 seconds); SQS allows batches above 10 only with a batching window',
    ],
    ['concurrency 1', { maxConcurrency: 1 }, 'Invalid maxConcurrency: 1 must be an integer from 2 to 1000'],
    ['concurrency 1001', { maxConcurrency: 1001 }, 'Invalid maxConcurrency: 1001 must be an integer from 2 to 1000'],
    ['memory 127', { memorySize: 127 }, 'Invalid memorySize: 127 must be an integer from 128 to 10240 MB'],
    ['memory 10241', { memorySize: 10_241 }, 'Invalid memorySize: 10241 must be an integer from 128 to 10240 MB'],
    ['memory 512.5', { memorySize: 512.5 }, 'Invalid memorySize: 512.5 must be an integer from 128 to 10240 MB'],
    ['drain batch size 0', { drainBatchSize: 0 }, 'Invalid drainBatchSize: 0 must be an integer from 1 to 10000'],
    ['receive count 0', { maxReceiveCount: 0 }, 'Invalid maxReceiveCount: 0 must be an integer from 1 to 1000'],
    ['receive count 1001', { maxReceiveCount: 1001 }, 'Invalid maxReceiveCount: 1001 must be an integer from 1 to 1000'],
    ['errors threshold 0', { errorsThreshold: 0 }, 'Invalid errorsThreshold: 0 must be an integer of at least 1'],
    ['throttles threshold 0.5', { throttlesThreshold: 0.5 }, 'Invalid throttlesThreshold: 0.5 must be an integer of at least 1'],
  ];

  const otherCases: Array<[string, Partial<SearchOutboxDrainerProps>, string]> = [
    ['ssl disable', { ssl: 'disable' as never }, `Invalid ssl: "disable" must be 'require' or 'verify-full'`],
    [
      'outbox schema with a hyphen',
      { outboxSchema: 'search-outbox' },
      'Invalid outboxSchema: "search-outbox" must be a schema name of letters, digits and underscores, not starting with a digit, at most 63 characters',
    ],
    [
      'cache schema starting with a digit',
      { cacheSchema: '1cache' },
      'Invalid cacheSchema: "1cache" must be a schema name of letters, digits and underscores, not starting with a digit, at most 63 characters',
    ],
    [
      'handler name with a hyphen',
      { handlers: { sqs: 'sqs-handler' } },
      'Invalid handlers.sqs: "sqs-handler" must be the name of an export of the entry module (a JavaScript identifier)',
    ],
    [
      'empty security group list',
      { securityGroups: [] },
      'Invalid securityGroups: [] must contain at least one security group; leave it out to have one created',
    ],
    [
      'snapshot removal policy',
      { removalPolicy: RemovalPolicy.SNAPSHOT },
      'Invalid removalPolicy: "snapshot" must be RETAIN, RETAIN_ON_UPDATE_OR_DELETE or DESTROY; queues and log groups have no snapshots',
    ],
    [
      'environment overriding DB_HOST',
      { environment: { DB_HOST: 'other' } },
      'Invalid environment: "DB_HOST" is set by the construct from its props; set the matching prop instead',
    ],
    [
      'environment name with a hyphen',
      { environment: { 'POOL-MAX': '3' } },
      'Invalid environment: "POOL-MAX" is not a valid variable name: use letters, digits and underscores, starting with a letter',
    ],
  ];

  test.each([...durationCases, ...numberCases, ...otherCases])('%s', (_name, overrides, message) => {
    expect(validationMessage(overrides)).toBe(message);
  });

  test('database fields', () => {
    const database = { host: 'db.example.internal', name: 'app', user: 'drainer' };
    expect(validationMessage({ database: { ...database, host: ' ' } })).toBe('Invalid database.host: " " must be a non-empty string');
    expect(validationMessage({ database: { ...database, name: '' } })).toBe('Invalid database.name: "" must be a non-empty string');
    expect(validationMessage({ database: { ...database, user: '' } })).toBe('Invalid database.user: "" must be a non-empty string');
    expect(validationMessage({ database: { ...database, port: 0 } })).toBe('Invalid database.port: 0 must be an integer from 1 to 65535');
    expect(validationMessage({ database: { ...database, port: 65_536 } })).toBe('Invalid database.port: 65536 must be an integer from 1 to 65535');
  });

  test('credentials of both kinds', () => {
    expect(
      validationMessage((props) => ({
        ...props,
        credentials: { secret: base.secret, iamAuthentication: true } as never,
      })),
    ).toBe('Invalid credentials: { secret, iamAuthentication } must set exactly one of secret and iamAuthentication: true');
  });

  test('credentials of neither kind', () => {
    expect(validationMessage({ credentials: {} as never })).toBe(
      'Invalid credentials: {} must set exactly one of secret and iamAuthentication: true',
    );
  });

  test('credentials missing', () => {
    expect(validationMessage({ credentials: undefined as never })).toBe(
      'Invalid credentials: undefined is missing; give { secret } or { iamAuthentication: true }',
    );
  });

  test('iamAuthentication false', () => {
    expect(validationMessage({ credentials: { iamAuthentication: false } as never })).toBe(
      'Invalid credentials.iamAuthentication: false must be true; give secret instead for password sign-in',
    );
  });

  test('IAM without resource id or proxy', () => {
    expect(validationMessage({ credentials: { iamAuthentication: true } })).toBe(
      'Invalid credentials.resourceId: undefined is required for iamAuthentication without database.proxy; ' +
        'give the resource id of the instance (db-...), cluster (cluster-...) or proxy (prx-...)',
    );
  });

  test('IAM with an instance name as resource id', () => {
    expect(validationMessage({ credentials: { iamAuthentication: true, resourceId: 'my-database' } })).toBe(
      'Invalid credentials.resourceId: "my-database" must be the resource id of an RDS instance (db-...), ' +
        'Aurora cluster (cluster-...) or RDS Proxy (prx-...), not its name or ARN',
    );
  });

  test('IAM with resource id and proxy', () => {
    const proxy = rds.DatabaseProxy.fromDatabaseProxyAttributes(base.stack, 'ValidationProxy', {
      dbProxyArn: 'arn:aws:rds:eu-west-1:123456789012:db-proxy:prx-0123456789abcdef0',
      dbProxyName: 'proxy',
      endpoint: 'proxy.example.internal',
      securityGroups: [],
    });
    expect(
      validationMessage({
        database: { host: 'proxy.example.internal', name: 'app', user: 'drainer', proxy },
        credentials: { iamAuthentication: true, resourceId: 'prx-0123456789abcdef0' },
      }),
    ).toBe(
      'Invalid credentials.resourceId: "prx-0123456789abcdef0" and database.proxy are alternatives: ' +
        'with a proxy the permission names the proxy; remove one of them',
    );
  });

  test('secret with a resource id', () => {
    expect(validationMessage({ credentials: { secret: base.secret, resourceId: 'db-ABC' } as never })).toBe(
      'Invalid credentials.resourceId: "db-ABC" applies only to iamAuthentication; remove it or drop secret',
    );
  });

  test('entry not found', () => {
    const entry = join(REPOSITORY_ROOT, 'packages/example-netbox/src/lambda/missing.ts');
    expect(validationMessage({ entry })).toBe(
      `Invalid entry: ${JSON.stringify(entry)} was not found (resolved to ${entry}); give the handler module or its directory`,
    );
  });

  test('entry directory without a handler module', () => {
    const directory = mkdtempSync(join(workDirectory, 'empty-entry-'));
    expect(validationMessage({ entry: directory })).toBe(
      `Invalid entry: ${JSON.stringify(directory)} is a directory without any of handler.ts, handler.mts, handler.js, ` +
        'handler.mjs, index.ts, index.mts, index.js, index.mjs; give the handler module itself',
    );
  });
});

describe('SearchOutboxDrainer with tokens', () => {
  test('unresolved values skip validation', () => {
    const base = baseStack();
    const number = (name: string) => new CfnParameter(base.stack, name, { type: 'Number' }).valueAsNumber;
    const text = (name: string) => new CfnParameter(base.stack, name, { type: 'String' }).valueAsString;
    const props: SearchOutboxDrainerProps = {
      ...minimalProps(base),
      database: { host: text('Host'), port: number('Port'), name: text('Name'), user: text('User') },
      outboxSchema: text('OutboxSchema'),
      batchSize: number('BatchSize'),
      maxConcurrency: number('MaxConcurrency'),
      timeout: Duration.seconds(number('Timeout')),
      memorySize: number('MemorySize'),
      drainBatchSize: number('DrainBatchSize'),
      maxReceiveCount: number('MaxReceiveCount'),
      errorsThreshold: number('ErrorsThreshold'),
      deadLetterRetention: Duration.seconds(number('DeadLetterRetention')),
    };

    new SearchOutboxDrainer(base.stack, 'Drainer', props);
    const template = Template.fromStack(base.stack);

    const variables = functionOf(template, 'sqs').resource.Properties.Environment.Variables;
    expect(variables.DB_HOST).toEqual({ Ref: 'Host' });
    expect(variables.SEARCH_OUTBOX_SCHEMA).toEqual({ Ref: 'OutboxSchema' });
    expect(functionOf(template, 'sqs').resource.Properties.MemorySize).toEqual({ Ref: 'MemorySize' });
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      BatchSize: { Ref: 'BatchSize' },
      ScalingConfig: { MaximumConcurrency: { Ref: 'MaxConcurrency' } },
    });
    // With the timeout unknown, the visibility timeout is 6 x the largest timeout of 15 minutes.
    template.hasResourceProperties('AWS::SQS::Queue', {
      VisibilityTimeout: 5400,
      RedrivePolicy: Match.objectLike({ maxReceiveCount: { Ref: 'MaxReceiveCount' } }),
    });
  });
});

describe('SearchOutboxDrainer warnings', () => {
  test('short dead-letter retention', () => {
    const base = baseStack();
    new SearchOutboxDrainer(base.stack, 'Drainer', { ...minimalProps(base), deadLetterRetention: Duration.days(1) });

    Annotations.fromStack(base.stack).hasWarning(
      '/Test/Drainer',
      Match.stringLikeRegexp("deadLetterRetention of 86400 seconds is shorter than the queue's retention of 4 days"),
    );
  });
});
