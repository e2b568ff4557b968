import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EXAMPLE_DATABASE_NAME, EXAMPLE_DRAINER_USER, ExampleStack } from '@search-outbox/infra';
import { App, type CfnElement } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import type { IConstruct } from 'constructs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

const CDK_JSON = fileURLToPath(new URL('../../infra/cdk.json', import.meta.url));

interface Resource {
  readonly Type: string;
  readonly Properties?: Record<string, any>;
}

let workDirectory: string;
let outdir: string;
let dockerLog: string;
let previousCdkDocker: string | undefined;
let stack: ExampleStack;
let template: Template;

/** Returns the one resource of `type`, failing when there is none or more than one. */
function single(type: string): [string, Resource] {
  const entries = Object.entries(template.findResources(type)) as [string, Resource][];
  expect(entries, `resources of type ${type}`).toHaveLength(1);
  return entries[0] as [string, Resource];
}

/** Logical id of the CloudFormation resource behind an L2 construct. */
function logicalIdOf(construct: IConstruct): string {
  return stack.getLogicalId(construct.node.defaultChild as CfnElement);
}

beforeAll(() => {
  workDirectory = mkdtempSync(join(tmpdir(), 'search-outbox-example-stack-'));
  outdir = join(workDirectory, 'cdk.out');
  dockerLog = join(workDirectory, 'docker-calls.log');

  // aws-cdk-lib runs the program named by CDK_DOCKER for Docker bundling.
  // This one records the call and fails, so a Docker build shows up in the log.
  const recorder = join(workDirectory, 'docker-recorder.sh');
  writeFileSync(recorder, `#!/bin/sh\necho "docker $*" >> '${dockerLog}'\nexit 1\n`);
  chmodSync(recorder, 0o755);
  previousCdkDocker = process.env.CDK_DOCKER;
  process.env.CDK_DOCKER = recorder;

  // The same feature flags as `cdk synth`, so the test synthesizes what the CLI does.
  const { context } = JSON.parse(readFileSync(CDK_JSON, 'utf8')) as { context: Record<string, unknown> };
  const app = new App({ context, outdir });
  stack = new ExampleStack(app, 'SearchOutboxExample');
  template = Template.fromStack(stack);
});

afterAll(() => {
  if (previousCdkDocker === undefined) delete process.env.CDK_DOCKER;
  else process.env.CDK_DOCKER = previousCdkDocker;
  rmSync(workDirectory, { recursive: true, force: true });
});

describe('example stack synthesis', () => {
  test('bundles the handler without Docker', () => {
    expect(existsSync(dockerLog), 'Docker was called').toBe(false);

    const functions = Object.values(template.findResources('AWS::Lambda::Function', { Properties: { Handler: Match.stringLikeRegexp('^index\\.') } })) as Resource[];
    expect(functions).toHaveLength(3);
    for (const fn of functions) {
      const key = String(fn.Properties?.Code?.S3Key);
      const assetDirectory = join(outdir, `asset.${key.replace(/\.zip$/, '')}`);
      expect(existsSync(join(assetDirectory, 'index.mjs')), `bundle in ${assetDirectory}`).toBe(true);
    }
  });

  test('has no error or warning annotations', () => {
    expect(Annotations.fromStack(stack).findError('*', Match.anyValue())).toEqual([]);
    expect(Annotations.fromStack(stack).findWarning('*', Match.anyValue())).toEqual([]);
  });

  test('makes no context lookups', () => {
    // A lookup without a cached value records missing context, which the CLI would then fetch from AWS.
    const manifest = JSON.parse(readFileSync(join(outdir, 'manifest.json'), 'utf8')) as { missing?: unknown[] };
    expect(manifest.missing ?? []).toEqual([]);
  });
});

describe('example stack outputs', () => {
  test('include the drainer and database outputs', () => {
    const names = Object.keys(template.findOutputs('*'));
    for (const pattern of [
      /^DrainerQueueUrl/,
      /^DrainerDeadLetterQueueUrl/,
      /^DrainerInvokeFunctionName/,
      /^ApplicationRoleArn$/,
      /^ProxyEndpoint$/,
      /^ClusterEndpoint$/,
      /^MasterSecretArn$/,
      /^DrainerSecretArn$/,
      /^AlarmTopicArn$/,
    ]) {
      expect(names.filter((name) => pattern.test(name)), `outputs matching ${pattern}`).toHaveLength(1);
    }
  });

  test('point at the queue, the role and the proxy', () => {
    const queueId = logicalIdOf(stack.drainer.queue);
    const roleId = logicalIdOf(stack.applicationRole);
    const [proxyId] = single('AWS::RDS::DBProxy');

    const queueOutput = Object.keys(template.findOutputs('*')).find((name) => name.startsWith('DrainerQueueUrl'));
    expect(queueOutput).toBeDefined();
    template.hasOutput(queueOutput as string, { Value: { Ref: queueId } });
    template.hasOutput('ApplicationRoleArn', { Value: { 'Fn::GetAtt': [roleId, 'Arn'] } });
    template.hasOutput('ProxyEndpoint', { Value: { 'Fn::GetAtt': [proxyId, 'Endpoint'] } });
  });
});

describe('example stack resources', () => {
  test('VPC has no NAT or internet gateway', () => {
    template.resourceCountIs('AWS::EC2::NatGateway', 0);
    template.resourceCountIs('AWS::EC2::InternetGateway', 0);
    template.resourceCountIs('AWS::EC2::Subnet', 2);
    template.resourceCountIs('AWS::EC2::VPCEndpoint', 2);
    template.resourceCountIs('AWS::EC2::FlowLog', 1);
  });

  test('ingress comes only from security groups', () => {
    for (const resource of Object.values(template.findResources('AWS::EC2::SecurityGroup')) as Resource[]) {
      expect(resource.Properties?.SecurityGroupIngress ?? [], 'inline ingress rules').toEqual([]);
    }
    const ingressRules = Object.values(template.findResources('AWS::EC2::SecurityGroupIngress')) as Resource[];
    expect(ingressRules.length).toBeGreaterThan(0);
    for (const rule of ingressRules) {
      expect(rule.Properties?.CidrIp, 'ingress by address range').toBeUndefined();
      expect(rule.Properties?.SourceSecurityGroupId, 'ingress source').toBeDefined();
    }
  });

  test('cluster is encrypted, protected and IAM-enabled', () => {
    const [, cluster] = single('AWS::RDS::DBCluster');
    expect(cluster.Properties).toMatchObject({
      Engine: 'aurora-postgresql',
      StorageEncrypted: true,
      DeletionProtection: true,
      EnableIAMDatabaseAuthentication: true,
      DatabaseName: EXAMPLE_DATABASE_NAME,
      ServerlessV2ScalingConfiguration: { MinCapacity: 0.5, MaxCapacity: 4 },
    });
    template.hasResourceProperties('AWS::RDS::DBInstance', { DBInstanceClass: 'db.serverless', PubliclyAccessible: false });
    template.resourceCountIs('AWS::SecretsManager::RotationSchedule', 2);
  });

  test('proxy requires IAM authentication and TLS', () => {
    const [, proxy] = single('AWS::RDS::DBProxy');
    expect(proxy.Properties?.RequireTLS).toBe(true);
    expect(proxy.Properties?.EngineFamily).toBe('POSTGRESQL');
    const drainerSecretId = logicalIdOf(stack.drainerSecret);
    expect(proxy.Properties?.Auth).toEqual([
      expect.objectContaining({ AuthScheme: 'SECRETS', IAMAuth: 'REQUIRED', SecretArn: { Ref: drainerSecretId } }),
    ]);
  });

  test('drainer connects through the proxy', () => {
    const [proxyId] = single('AWS::RDS::DBProxy');
    const functions = Object.values(template.findResources('AWS::Lambda::Function', { Properties: { Handler: Match.stringLikeRegexp('^index\\.') } })) as Resource[];
    expect(functions).toHaveLength(3);
    for (const fn of functions) {
      expect(fn.Properties?.Environment?.Variables).toMatchObject({
        DB_HOST: { 'Fn::GetAtt': [proxyId, 'Endpoint'] },
        DB_NAME: EXAMPLE_DATABASE_NAME,
        DB_USER: EXAMPLE_DRAINER_USER,
        DB_IAM_AUTH: 'true',
        DB_SSL: 'verify-full',
      });
    }

    // rds-db:connect names the drainer's user.
    template.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Action: 'rds-db:connect',
            Resource: Match.objectLike({ 'Fn::Join': Match.arrayWith([Match.arrayWith([`/${EXAMPLE_DRAINER_USER}`])]) }),
          }),
        ]),
      },
    });
  });

  test('application role may send to the queue', () => {
    const queueId = logicalIdOf(stack.drainer.queue);
    const roleId = logicalIdOf(stack.applicationRole);
    template.hasResourceProperties('AWS::IAM::Policy', {
      Roles: [{ Ref: roleId }],
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Action: Match.arrayWith(['sqs:SendMessage']),
            Resource: { 'Fn::GetAtt': [queueId, 'Arn'] },
          }),
        ]),
      },
    });
  });

  test('every alarm notifies the alarm topic', () => {
    const [topicId] = single('AWS::SNS::Topic');
    const alarms = Object.values(template.findResources('AWS::CloudWatch::Alarm')) as Resource[];
    expect(alarms).toHaveLength(8);
    for (const alarm of alarms) {
      expect(alarm.Properties?.AlarmActions).toEqual([{ Ref: topicId }]);
      expect(alarm.Properties?.OKActions).toEqual([{ Ref: topicId }]);
    }
  });

  test('alarm topic is encrypted with a rotating key', () => {
    const [keyId, key] = single('AWS::KMS::Key');
    expect(key.Properties?.EnableKeyRotation).toBe(true);
    template.hasResourceProperties('AWS::SNS::Topic', { KmsMasterKeyId: { 'Fn::GetAtt': [keyId, 'Arn'] } });
  });
});
