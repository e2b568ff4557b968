/**
 * CDK app of the example stack, run by `npm run synth` or by `npx cdk synth`
 * in this directory. It makes no AWS calls and needs no credentials.
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ExampleStack } from '../src/index.js';

const app = new App();
new ExampleStack(app, 'SearchOutboxExample', {
  description: 'search-outbox example: Aurora PostgreSQL behind RDS Proxy, and the search-outbox drainer',
});
// Synthesis fails on any AwsSolutions finding that the stack does not acknowledge.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
