import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CfnOutput, Duration, RemovalPolicy, Stack, Validations, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import type { Construct } from 'constructs';
import { SearchOutboxDrainer } from './search-outbox-drainer.js';

/** The example application's Lambda entry, relative to the repository root. */
export const EXAMPLE_ENTRY = 'packages/example-netbox/src/lambda/handler.ts';

/** Database that the example application and the drainer use. */
export const EXAMPLE_DATABASE_NAME = 'netbox';

/**
 * Database user of the drainer. The stack creates its secret, but the role
 * itself must be created in PostgreSQL after the deployment (see
 * docs/deployment.md), because CloudFormation cannot run SQL.
 */
export const EXAMPLE_DRAINER_USER = 'search_outbox_drainer';

/** Rotation interval of both database secrets. */
const SECRET_ROTATION_INTERVAL = Duration.days(30);

/** Props of {@link ExampleStack}. */
export interface ExampleStackProps extends StackProps {
  /**
   * Root of the search-outbox repository, which contains the example entry and
   * `package-lock.json`.
   * @default - the nearest directory above this module that contains the example entry
   */
  readonly repositoryRoot?: string;
}

/**
 * Example deployment of the drainer for the NetBox example application. It
 * creates a VPC without NAT gateways, an Aurora PostgreSQL Serverless v2
 * cluster behind an RDS Proxy with IAM authentication, and an SNS topic for
 * the alarms. Then it adds the drainer and an application role that may send nudges.
 *
 * The stack is environment-agnostic and makes no context lookups, so it
 * synthesizes offline.
 */
export class ExampleStack extends Stack {
  readonly vpc: ec2.Vpc;
  readonly cluster: rds.DatabaseCluster;
  readonly proxy: rds.DatabaseProxy;
  /** Secret of the drainer's database user, which the proxy signs in with. */
  readonly drainerSecret: secretsmanager.ISecret;
  readonly alarmTopic: sns.Topic;
  readonly drainer: SearchOutboxDrainer;
  /** Role of the example application: allowed to send nudges to the drainer's queue. */
  readonly applicationRole: iam.Role;

  constructor(scope: Construct, id: string, props: ExampleStackProps = {}) {
    super(scope, id, props);
    const repositoryRoot = props.repositoryRoot ?? findRepositoryRoot(dirname(fileURLToPath(import.meta.url)));
    const isolatedSubnets: ec2.SubnetSelection = { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };

    this.vpc = this.createVpc();
    // Interface endpoints instead of NAT gateways: the sqs function sends
    // follow-up nudges to SQS, and the proxy and the rotation functions read
    // secrets. Each endpoint is billed per hour in each of the two zones. They
    // admit only the security groups that need them (see the end of the constructor).
    const secretsManagerEndpoint = this.vpc.addInterfaceEndpoint('SecretsManagerEndpoint', {
      service: ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
      subnets: isolatedSubnets,
      open: false,
    });
    const sqsEndpoint = this.vpc.addInterfaceEndpoint('SqsEndpoint', {
      service: ec2.InterfaceVpcEndpointAwsService.SQS,
      subnets: isolatedSubnets,
      open: false,
    });
    const proxySecurityGroup = new ec2.SecurityGroup(this, 'ProxySecurityGroup', {
      vpc: this.vpc,
      description: 'RDS Proxy of the search-outbox example database',
    });
    const rotationSecurityGroup = new ec2.SecurityGroup(this, 'RotationSecurityGroup', {
      vpc: this.vpc,
      description: 'Secret rotation functions of the search-outbox example database',
    });

    this.cluster = new rds.DatabaseCluster(this, 'Database', {
      // NOTE: 17.x rather than the 18.x versions that aws-cdk-lib also lists,
      // because RDS Proxy support for 18 was not confirmed. Check the RDS Proxy engine list before moving on.
      engine: rds.DatabaseClusterEngine.auroraPostgres({ version: rds.AuroraPostgresEngineVersion.VER_17_9 }),
      credentials: rds.Credentials.fromGeneratedSecret('postgres'),
      defaultDatabaseName: EXAMPLE_DATABASE_NAME,
      writer: rds.ClusterInstance.serverlessV2('Writer'),
      // The smallest capacity short of 0 ACU. NOTE: auto-pause at 0 ACU is left
      // out because the proxy's pooled connections would likely keep the writer
      // from pausing. This was not checked against a deployment.
      serverlessV2MinCapacity: 0.5,
      serverlessV2MaxCapacity: 4,
      vpc: this.vpc,
      vpcSubnets: isolatedSubnets,
      storageEncrypted: true,
      deletionProtection: true,
      iamAuthentication: true,
      backup: { retention: Duration.days(7) },
      removalPolicy: RemovalPolicy.SNAPSHOT,
    });
    this.cluster.addRotationSingleUser({
      automaticallyAfter: SECRET_ROTATION_INTERVAL,
      endpoint: secretsManagerEndpoint,
      vpcSubnets: isolatedSubnets,
      securityGroup: rotationSecurityGroup,
    });

    this.drainerSecret = new rds.DatabaseSecret(this, 'DrainerSecret', {
      username: EXAMPLE_DRAINER_USER,
      masterSecret: this.cluster.secret,
    }).attach(this.cluster);
    // Single-user rotation changes the password of the same user, so the
    // proxy keeps finding the secret under the user name that the drainer's
    // IAM token names. It waits for the first interval, because the role
    // does not exist in the database until it is created after deployment.
    new secretsmanager.SecretRotation(this, 'DrainerSecretRotation', {
      application: secretsmanager.SecretRotationApplication.POSTGRES_ROTATION_SINGLE_USER,
      secret: this.drainerSecret,
      target: this.cluster,
      vpc: this.vpc,
      vpcSubnets: isolatedSubnets,
      endpoint: secretsManagerEndpoint,
      securityGroup: rotationSecurityGroup,
      automaticallyAfter: SECRET_ROTATION_INTERVAL,
      rotateImmediatelyOnUpdate: false,
    });

    this.proxy = this.cluster.addProxy('Proxy', {
      vpc: this.vpc,
      vpcSubnets: isolatedSubnets,
      securityGroups: [proxySecurityGroup],
      secrets: [this.drainerSecret],
      iamAuth: true,
      requireTLS: true,
    });

    this.alarmTopic = this.createAlarmTopic();

    this.drainer = new SearchOutboxDrainer(this, 'Drainer', {
      entry: join(repositoryRoot, EXAMPLE_ENTRY),
      depsLockFilePath: join(repositoryRoot, 'package-lock.json'),
      projectRoot: repositoryRoot,
      vpc: this.vpc,
      vpcSubnets: isolatedSubnets,
      database: {
        host: this.proxy.endpoint,
        name: EXAMPLE_DATABASE_NAME,
        user: EXAMPLE_DRAINER_USER,
        connections: this.proxy,
        proxy: this.proxy,
      },
      credentials: { iamAuthentication: true },
      alarmTopic: this.alarmTopic,
    });

    // The application's own compute (an ECS task here) would run with this
    // role and read the queue URL from the QueueUrl output.
    this.applicationRole = new iam.Role(this, 'ApplicationRole', {
      assumedBy: new iam.ServicePrincipal('ecs-tasks.amazonaws.com'),
      description: 'Example application: sends search-outbox nudges after each commit',
    });
    this.drainer.grantEnqueue(this.applicationRole);

    secretsManagerEndpoint.connections.allowDefaultPortFrom(proxySecurityGroup, 'RDS Proxy reads the drainer secret');
    secretsManagerEndpoint.connections.allowDefaultPortFrom(rotationSecurityGroup, 'Rotation functions read and update the secrets');
    sqsEndpoint.connections.allowDefaultPortFrom(this.drainer, 'The sqs function sends follow-up nudges');

    this.createOutputs();
    this.acknowledgeNagFindings();
  }

  /** Two zones of isolated subnets only: no internet gateway and no NAT gateway. */
  private createVpc(): ec2.Vpc {
    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 0,
      subnetConfiguration: [{ name: 'isolated', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 }],
    });
    const flowLogGroup = new logs.LogGroup(this, 'VpcFlowLogGroup', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    vpc.addFlowLog('FlowLog', {
      destination: ec2.FlowLogDestination.toCloudWatchLogs(flowLogGroup),
      trafficType: ec2.FlowLogTrafficType.REJECT,
    });
    return vpc;
  }

  /**
   * SNS topic of the drainer's alarms, encrypted with a customer managed key:
   * CloudWatch alarms cannot publish to a topic encrypted with the AWS managed
   * SNS key, because its key policy cannot be changed.
   */
  private createAlarmTopic(): sns.Topic {
    const key = new kms.Key(this, 'AlarmTopicKey', {
      description: 'Encrypts the search-outbox alarm topic',
      enableKeyRotation: true,
    });
    key.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: { StringEquals: { 'aws:SourceAccount': this.account } },
      }),
    );
    return new sns.Topic(this, 'AlarmTopic', {
      displayName: 'search-outbox alarms',
      masterKey: key,
      enforceSSL: true,
    });
  }

  private createOutputs(): void {
    new CfnOutput(this, 'ApplicationRoleArn', {
      description: 'Role allowed to send nudges to the drainer queue. Give it to the application.',
      value: this.applicationRole.roleArn,
    });
    new CfnOutput(this, 'ProxyEndpoint', {
      description: 'RDS Proxy endpoint of the drainer (IAM authentication, TLS required)',
      value: this.proxy.endpoint,
    });
    new CfnOutput(this, 'ClusterEndpoint', {
      description: 'Writer endpoint of the Aurora cluster, for migrations with the master secret',
      value: this.cluster.clusterEndpoint.hostname,
    });
    new CfnOutput(this, 'MasterSecretArn', {
      description: 'Secret of the cluster master user (postgres)',
      value: this.cluster.secret?.secretArn ?? '',
    });
    new CfnOutput(this, 'DrainerSecretArn', {
      description: `Secret of the drainer database user (${EXAMPLE_DRAINER_USER}). Create the role with its password.`,
      value: this.drainerSecret.secretArn,
    });
    new CfnOutput(this, 'AlarmTopicArn', {
      description: 'SNS topic of the drainer alarms. Subscribe to it.',
      value: this.alarmTopic.topicArn,
    });
  }

  /** Acknowledges the cdk-nag AwsSolutions findings that this example accepts, each with its reason. */
  private acknowledgeNagFindings(): void {
    Validations.of(this.cluster).acknowledge({
      id: 'AwsSolutions-RDS11',
      reason:
        'The cluster keeps the PostgreSQL default port 5432. It sits in isolated subnets and its security group admits only the proxy and the rotation functions, so another port would hide nothing.',
    });
  }
}

/** Walks up from `start` to the directory that contains the example entry. */
function findRepositoryRoot(start: string): string {
  let directory = start;
  for (;;) {
    if (existsSync(join(directory, EXAMPLE_ENTRY))) return directory;
    const parent = dirname(directory);
    if (parent === directory) {
      throw new Error(`No directory above ${start} contains ${EXAMPLE_ENTRY}. Pass repositoryRoot to ExampleStack.`);
    }
    directory = parent;
  }
}
