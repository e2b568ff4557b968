import type pg from 'pg';

/** SQLSTATE of "out of shared memory", raised when the shared lock table is full. */
const OUT_OF_SHARED_MEMORY = '53200';

/**
 * Fills the server's shared lock table with session-level advisory locks
 * held by `client`, then frees `freeEntries` of them, so that a later
 * transaction fits only if it takes fewer locks. The locks use the two-key
 * form with `classId`, which the one-key object locks never match. They stay
 * until the client's session ends. Run it on a server of the test's own,
 * because a full lock table fails the lock requests of every session.
 */
export async function fillLockTable(client: pg.Client, options: { classId: number; freeEntries: number }): Promise<void> {
  const step = 1000;
  let locked = 0;
  for (;;) {
    try {
      await client.query('SELECT count(pg_advisory_lock($1::int, key)) FROM generate_series($2::int, $3::int) AS key', [
        options.classId,
        locked + 1,
        locked + step,
      ]);
      locked += step;
    } catch (error) {
      if ((error as { code?: unknown }).code !== OUT_OF_SHARED_MEMORY) throw error;
      break;
    }
  }
  // The keys of the failed statement that were granted stay locked too, so
  // the freed entries come from the last full steps.
  await client.query('SELECT count(pg_advisory_unlock($1::int, key)) FROM generate_series($2::int, $3::int) AS key', [
    options.classId,
    locked - options.freeEntries + 1,
    locked,
  ]);
}
