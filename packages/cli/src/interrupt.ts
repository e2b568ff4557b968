import type { Logger } from '@search-outbox/core';

/**
 * Turns the first SIGINT (Ctrl-C) into an abort signal, so a drain or a
 * rebuild stops between batches and a rebuild can resume later. A second
 * SIGINT falls through to Node's default handler and ends the process.
 */
export function stopOnInterrupt(logger: Logger): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const onInterrupt = (): void => {
    logger.warn('interrupted: stopping after the current batch; press Ctrl-C again to quit at once');
    process.removeListener('SIGINT', onInterrupt);
    controller.abort();
  };
  process.once('SIGINT', onInterrupt);
  return { signal: controller.signal, dispose: () => process.removeListener('SIGINT', onInterrupt) };
}
