import type { BenchContext } from './context.js';
import type { ScenarioResult } from './results.js';

/** One measurement of the benchmark, run by the harness in its own databases. */
export interface Scenario {
  /** Short id used on the command line, such as `write-path`. */
  readonly id: string;
  readonly title: string;
  run(context: BenchContext): Promise<ScenarioResult>;
}
