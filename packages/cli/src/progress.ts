import cliProgress from 'cli-progress';

/** A progress bar on stderr, or nothing when stderr is not a terminal or the output is JSON. */
export interface ProgressBar {
  start(total: number, label: string): void;
  update(done: number): void;
  stop(): void;
}

const NO_PROGRESS: ProgressBar = { start: () => {}, update: () => {}, stop: () => {} };

export function createProgressBar(enabled: boolean): ProgressBar {
  if (!enabled) return NO_PROGRESS;
  let bar: cliProgress.SingleBar | undefined;
  return {
    start(total, label) {
      bar?.stop();
      bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: `${label.padEnd(30)} [{bar}] {value}/{total} | {duration_formatted}`,
          hideCursor: true,
          clearOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      );
      // A total of zero would draw an empty bar that never fills.
      bar.start(Math.max(total, 1), 0);
    },
    update(done) {
      if (bar === undefined) return;
      // A drain can claim more rows than were pending when it started.
      if (done > bar.getTotal()) bar.setTotal(done);
      bar.update(done);
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}
