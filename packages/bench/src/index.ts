export { createBenchContext, type BenchContext, type BenchDatabase, type SizeClass } from './context.js';
export { countCacheRows, countLimitRows, insertAtLimit, selectLimitRows, truncateCache, type ObjectSelection } from './limit.js';
export { renderReport, type ReportInput, type ReportEnvironment } from './report.js';
export { medianOf, ratioOf, type Figure, type Ratio, type ScenarioResult, type TargetCheck } from './results.js';
export { createBenchData, ID_STRIDE, markSelection, pickObjects, prepareScaledData, scaleTo, type BenchData, type ScaleCounts } from './scale.js';
export type { Scenario } from './scenario.js';
export { SCENARIOS, selectScenarios } from './scenarios/index.js';
export { repeat, summarize, time, type Summary } from './stats.js';
