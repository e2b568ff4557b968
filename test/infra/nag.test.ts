import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ExampleStack } from '@search-outbox/infra';
import { App, Stack, Validations, type PolicyValidationPluginReport } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

// cdk-nag 3 is a CDK policy validation plugin: its findings go to the
// validation report of the synthesis, not to annotations, so these tests read
// the report (`validateScope`) and let `app.synth()` fail on it as the CLI does.

const CDK_JSON = fileURLToPath(new URL('../../infra/cdk.json', import.meta.url));
const { context } = JSON.parse(readFileSync(CDK_JSON, 'utf8')) as { context: Record<string, unknown> };

/** Every finding that the example stack acknowledges. A new one needs a reason in the stack and an entry here. */
const EXPECTED_ACKNOWLEDGEMENTS = [
  'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
  'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
  'AwsSolutions-L1',
  'AwsSolutions-RDS11',
];

let workDirectory: string;

beforeAll(() => {
  workDirectory = mkdtempSync(join(tmpdir(), 'search-outbox-nag-'));
});

afterAll(() => {
  rmSync(workDirectory, { recursive: true, force: true });
});

function newApp(name: string): App {
  return new App({ context, outdir: join(workDirectory, name) });
}

/** Formats one line per finding and resource, so a failure lists what to fix. */
function describeViolations(report: PolicyValidationPluginReport): string[] {
  return report.violations.flatMap((violation) =>
    violation.violatingResources.map((resource) => `${violation.severity} ${violation.ruleName} at ${resource.constructPath}: ${violation.description}`),
  );
}

/** Acknowledged AwsSolutions rule ids and their reasons, from the construct tree's metadata. */
function collectAcknowledgements(root: IConstruct): Map<string, string> {
  const acknowledgements = new Map<string, string>();
  for (const construct of root.node.findAll()) {
    for (const entry of construct.node.metadata) {
      if (entry.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
      for (const [id, reason] of Object.entries(entry.data as Record<string, string>)) {
        // aws-cdk-lib also acknowledges some of its own CloudFormation-Validate rules, so only cdk-nag's rules count here.
        const ruleId = id.replace(/^annotation::/i, '');
        if (ruleId.startsWith('AwsSolutions-')) acknowledgements.set(ruleId, reason);
      }
    }
  }
  return acknowledgements;
}

describe('cdk-nag AwsSolutions checks', () => {
  test('example stack has no findings', () => {
    const app = newApp('example');
    const stack = new ExampleStack(app, 'SearchOutboxExample');
    Template.fromStack(stack);

    const report = new AwsSolutionsChecks(app).validateScope(stack);

    expect(describeViolations(report)).toEqual([]);
    expect(report.success).toBe(true);
  });

  test('acknowledgements are listed with reasons', () => {
    const app = newApp('acknowledgements');
    const stack = new ExampleStack(app, 'SearchOutboxExample');

    const acknowledgements = collectAcknowledgements(stack);

    expect([...acknowledgements.keys()].sort()).toEqual(EXPECTED_ACKNOWLEDGEMENTS);
    for (const [id, reason] of acknowledgements) {
      expect(reason.length, `reason of ${id}`).toBeGreaterThan(40);
    }
  });

  test('app synthesis passes with the checks', () => {
    const app = newApp('synth');
    new ExampleStack(app, 'SearchOutboxExample');
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));

    expect(() => app.synth()).not.toThrow();
  });

  test('checks reject a queue without SSL or DLQ', () => {
    // Shows that the checks run in this setup: the same calls fail on a known finding.
    const app = newApp('control');
    const stack = new Stack(app, 'Control');
    new sqs.Queue(stack, 'Queue');

    const report = new AwsSolutionsChecks(app).validateScope(stack);

    const rules = report.violations.map((violation) => violation.ruleName);
    expect(rules).toContain('AwsSolutions-SQS3');
    expect(rules).toContain('AwsSolutions-SQS4');
    expect(report.violations.every((violation) => violation.severity === 'error')).toBe(true);
  });
});
