import type { Summary } from './stats.js';

/** One measured figure: a summary over repeated runs, in a unit. */
export interface Figure {
  readonly label: string;
  readonly unit: string;
  readonly summary: Summary;
}

/** A ratio measured in the same run: the median of `figure` over the median of `baseline`. */
export interface Ratio {
  readonly label: string;
  readonly figure: string;
  readonly baseline: string;
  readonly value: number;
}

/** A target from the benchmark's goals, checked against a measured value. */
export interface TargetCheck {
  readonly target: string;
  readonly measured: string;
  readonly met: boolean;
  /** Reason a target was missed, and what would close it. */
  readonly reason?: string;
}

export interface ScenarioResult {
  readonly id: string;
  readonly title: string;
  /** Sizes and settings of this run, such as `{ objects: 5000 }`. */
  readonly parameters: Readonly<Record<string, string | number>>;
  readonly figures: readonly Figure[];
  readonly ratios: readonly Ratio[];
  readonly targets: readonly TargetCheck[];
  readonly notes: readonly string[];
}

/** Returns the median of the figure with this label, or throws when it is missing. */
export function medianOf(figures: readonly Figure[], label: string): number {
  const figure = figures.find((candidate) => candidate.label === label);
  if (figure === undefined) throw new Error(`No figure labelled "${label}"`);
  return figure.summary.median;
}

/** Builds a ratio of two figures' medians. */
export function ratioOf(figures: readonly Figure[], label: string, figure: string, baseline: string): Ratio {
  return { label, figure, baseline, value: medianOf(figures, figure) / medianOf(figures, baseline) };
}
