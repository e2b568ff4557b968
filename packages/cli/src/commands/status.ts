import { Command } from 'commander';
import { assertMigrated, type OutboxStatus } from '@search-outbox/core';
import { EXIT_SUCCESS } from '../errors.js';
import type { CommandBuilder } from '../program.js';

export function registerStatus(program: Command, build: CommandBuilder): void {
  const command = program
    .command('status')
    .description('Show the outbox lag: pending rows, age of the oldest pending row, failed and dead rows, per object type');

  build(command, async (context) =>
    context.withOutbox(false, async (outbox, config, db) => {
      await assertMigrated(db, config.outboxSchema);
      const status = await outbox.status();
      if (context.json) {
        context.printJson(status);
      } else {
        context.printLines(formatStatus(status));
      }
      return EXIT_SUCCESS;
    }),
  );
}

function formatAge(seconds: number | null): string {
  return seconds === null ? '-' : `${seconds.toFixed(1)} s`;
}

function formatStatus(status: OutboxStatus): string[] {
  const lines = [
    `pending: ${status.pending}`,
    `oldest pending age: ${formatAge(status.oldestPendingAgeSeconds)}`,
    `failed: ${status.failed}`,
    `dead: ${status.dead}`,
  ];
  if (status.byType.length === 0) return lines;

  lines.push('');
  lines.push(`${'object type'.padEnd(32)}${'pending'.padStart(9)}${'oldest'.padStart(12)}${'failed'.padStart(9)}${'dead'.padStart(9)}`);
  for (const type of status.byType) {
    lines.push(
      `${type.objectType.padEnd(32)}${String(type.pending).padStart(9)}${formatAge(type.oldestPendingAgeSeconds).padStart(12)}` +
        `${String(type.failed).padStart(9)}${String(type.dead).padStart(9)}`,
    );
  }
  return lines;
}
