/** A listener for the moment the event loop has nothing left to run. */
export interface EventLoopWatch {
  /**
   * Resolves on the process's 'beforeExit' event, which Node emits when no
   * timer, socket or other handle is left. A promise still pending then can
   * never settle. Stays pending when the process ends through process.exit().
   */
  readonly emptied: Promise<void>;
  /** Removes the listener. Call it once the awaited work has settled. */
  dispose(): void;
}

/**
 * Starts watching for an empty event loop. Node exits with code 13 and no
 * message when the main module's top-level await is still pending at that
 * point, so the CLI races its work against `emptied` to report what hung.
 */
export function watchEventLoop(): EventLoopWatch {
  let onBeforeExit: () => void = () => undefined;
  const emptied = new Promise<void>((resolve) => {
    onBeforeExit = () => resolve();
  });
  process.once('beforeExit', onBeforeExit);
  return { emptied, dispose: () => process.removeListener('beforeExit', onBeforeExit) };
}

/**
 * Resolves after the callbacks queued so far, promise reactions included,
 * have run. A watcher that reports a generic stall waits for this, so that
 * a more specific watcher reacting to the same 'beforeExit' can end the
 * command with its own message first.
 */
export function afterQueuedCallbacks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
