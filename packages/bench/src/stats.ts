/** Summary of repeated measurements of one figure. */
export interface Summary {
  readonly runs: number;
  readonly min: number;
  readonly median: number;
  readonly max: number;
  /** 99th percentile (nearest rank); equals max for fewer than 100 samples. */
  readonly p99: number;
}

/** Summarizes samples as min / median / max and the 99th percentile (nearest rank). */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('summarize needs at least one sample');
  const sorted = [...samples].sort((left, right) => left - right);
  const at = (fraction: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)] as number;
  const middle = Math.floor(sorted.length / 2);
  const median =
    sorted.length % 2 === 1 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
  return { runs: sorted.length, min: sorted[0] as number, median, max: sorted[sorted.length - 1] as number, p99: at(0.99) };
}

/** Runs `measure` `runs` times one after the other and returns the samples. */
export async function repeat(runs: number, measure: (run: number) => Promise<number>): Promise<number[]> {
  const samples: number[] = [];
  for (let run = 0; run < runs; run += 1) samples.push(await measure(run));
  return samples;
}

/** Measures the wall time of `work` in milliseconds, with a monotonic clock. */
export async function time(work: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint();
  await work();
  return Number(process.hrtime.bigint() - started) / 1e6;
}
