import { startLocalPostgres, type LocalPostgres } from '@search-outbox/local-postgres';
import type { TestProject } from 'vitest/node';

let server: LocalPostgres | undefined;

/**
 * Starts one PostgreSQL server for the whole run (embedded, or the one named
 * by DATABASE_URL); each test file then creates its own database on it.
 */
export async function setup(project: TestProject): Promise<void> {
  server = await startLocalPostgres();
  project.provide('postgresUrl', server.connectionString);
}

export async function teardown(): Promise<void> {
  await server?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    postgresUrl: string;
  }
}
