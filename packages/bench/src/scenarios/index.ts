import type { Scenario } from '../scenario.js';
import { coalescingScenario } from './coalescing.js';
import { contentionScenario } from './contention.js';
import { drainThroughputScenario } from './drain-throughput.js';
import { fullRebuildScenario } from './full-rebuild.js';
import { latencyScenario } from './latency.js';
import { memoryScenario } from './memory.js';
import { searchLatencyScenario } from './search-latency.js';
import { writePathScenario } from './write-path.js';

/** Every scenario of the benchmark, in the order of a full run. */
export const SCENARIOS: readonly Scenario[] = [
  drainThroughputScenario,
  coalescingScenario,
  searchLatencyScenario,
  fullRebuildScenario,
  memoryScenario,
  writePathScenario,
  contentionScenario,
  latencyScenario,
];

/** Returns the scenarios with these ids, in registry order; throws on an unknown id. */
export function selectScenarios(ids: readonly string[] | undefined): Scenario[] {
  if (ids === undefined || ids.length === 0) return [...SCENARIOS];
  const known = new Set(SCENARIOS.map((scenario) => scenario.id));
  const unknown = ids.filter((id) => !known.has(id));
  if (unknown.length > 0) {
    throw new Error(`Unknown scenario ${unknown.map((id) => `"${id}"`).join(', ')}; expected one of ${[...known].join(', ')}`);
  }
  return SCENARIOS.filter((scenario) => ids.includes(scenario.id));
}
