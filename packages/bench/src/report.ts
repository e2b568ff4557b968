import type { Figure, ScenarioResult } from './results.js';

/** The machine and software a run measured on, shown at the top of the page. */
export interface ReportEnvironment {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly os: string;
  readonly node: string;
  readonly postgres: string;
  /** Package name to version, for the workspace packages and the main dependencies. */
  readonly packages: Readonly<Record<string, string>>;
  /** The exact command of the run. */
  readonly command: string;
  readonly startedAt: string;
  readonly size: string;
  readonly runs: number;
}

/** The run that measured one scenario's result, when a page combines several runs. */
export interface RunOrigin {
  readonly command: string;
  readonly size: string;
  readonly runs: number;
  readonly startedAt: string;
}

export interface ReportInput {
  readonly environment: ReportEnvironment;
  /** Scenario id to the run that measured it; omitted when every result comes from the run in `environment`. */
  readonly origins?: Readonly<Record<string, RunOrigin>>;
  readonly results: readonly ScenarioResult[];
  /** Scenarios requested but without a result (failed or not run), with the reason. */
  readonly missing: readonly { readonly id: string; readonly reason: string }[];
}

/** Renders the results page (Markdown). */
export function renderReport(input: ReportInput): string {
  const { environment, results, missing } = input;
  const lines: string[] = [
    '# Benchmarks',
    '',
    'Figures of the benchmark harness in `packages/bench`: each figure is min / median / max over',
    `repeated runs (p99 is the nearest-rank 99th percentile of those runs), and every ratio divides`,
    'two medians measured in the same run. Regenerate this page with the commands below.',
    '',
    '## Machine and command',
    '',
    '| | |',
    '|---|---|',
    `| CPU | ${environment.cpu}, ${environment.cores} logical cores |`,
    `| memory | ${environment.memoryGiB.toFixed(1)} GiB |`,
    `| OS | ${environment.os} |`,
    `| Node.js | ${environment.node} |`,
    `| PostgreSQL | ${environment.postgres} |`,
    `| packages | ${Object.entries(environment.packages).map(([name, version]) => `${name} ${version}`).join(', ')} |`,
    ...(input.origins === undefined
      ? [`| size, runs | ${environment.size}, ${environment.runs} |`, `| started | ${environment.startedAt} |`]
      : ['| size, runs, started | per scenario, below |']),
    '',
    '```sh',
    ...(input.origins === undefined
      ? [environment.command]
      : [
          ...new Set(Object.values(input.origins).map((origin) => origin.command)),
          '# then, with the JSON results of those runs copied into one directory:',
          'npm run bench -- --report-from <that directory> --out docs/benchmarks.md',
        ]),
    '```',
    '',
    '## Targets',
    '',
    '| scenario | target | measured | met |',
    '|---|---|---|---|',
  ];
  for (const result of results) {
    for (const check of result.targets) {
      lines.push(`| ${result.id} | ${escapeCell(check.target)} | ${escapeCell(check.measured)} | ${check.met ? 'met' : '**missed**'} |`);
    }
  }
  for (const entry of missing) lines.push(`| ${entry.id} | (no result) | ${escapeCell(entry.reason)} | **not measured** |`);
  lines.push('');

  for (const result of results) lines.push(...renderScenario(result, input.origins?.[result.id]));

  const misses = results.flatMap((result) => result.targets.filter((check) => !check.met).map((check) => ({ result, check })));
  lines.push('## Missed targets', '');
  if (misses.length === 0 && missing.length === 0) {
    lines.push('None in this run.', '');
  } else {
    for (const { result, check } of misses) {
      lines.push(`- **${result.id}**: ${check.target}; measured ${check.measured}. ${check.reason ?? ''}`.trimEnd());
    }
    for (const entry of missing) lines.push(`- **${entry.id}**: not measured in this run: ${entry.reason}`);
    lines.push('');
  }
  return `${lines.join('\n')}\n`;
}

function renderScenario(result: ScenarioResult, origin: RunOrigin | undefined): string[] {
  const lines = [`## ${result.title} (\`${result.id}\`)`, ''];
  if (origin !== undefined) {
    lines.push(`Measured by \`${origin.command}\` (size ${origin.size}, ${origin.runs} runs, started ${origin.startedAt}).`, '');
  }
  const parameters = Object.entries(result.parameters);
  if (parameters.length > 0) {
    lines.push(parameters.map(([name, value]) => `${name}: ${value}`).join('; ') + '.', '');
  }
  lines.push('| figure | unit | runs | min | median | max | p99 |', '|---|---|---:|---:|---:|---:|---:|');
  for (const figure of result.figures) lines.push(figureRow(figure));
  lines.push('');
  if (result.ratios.length > 0) {
    lines.push('| ratio (median / median) | value |', '|---|---:|');
    for (const ratio of result.ratios) lines.push(`| ${escapeCell(ratio.label)} | ${formatNumber(ratio.value, 'ratio')} |`);
    lines.push('');
  }
  if (result.targets.length > 0) {
    for (const check of result.targets) {
      const reason = check.met || check.reason === undefined ? '' : ` Reason: ${check.reason}`;
      lines.push(`- Target: ${check.target}. Measured: ${check.measured}. **${check.met ? 'Met' : 'Missed'}**.${reason}`);
    }
    lines.push('');
  }
  for (const note of result.notes) lines.push(`- ${note}`);
  if (result.notes.length > 0) lines.push('');
  return lines;
}

function figureRow(figure: Figure): string {
  const { summary, unit } = figure;
  const cells = [summary.min, summary.median, summary.max, summary.p99].map((value) => formatNumber(value, unit));
  return `| ${escapeCell(figure.label)} | ${unit} | ${summary.runs} | ${cells.join(' | ')} |`;
}

function formatNumber(value: number, unit: string): string {
  if (!Number.isFinite(value)) return String(value);
  if (unit === 'ratio') return value.toFixed(2);
  if (Number.isInteger(value) || Math.abs(value) >= 1000) return Math.round(value).toLocaleString('en-US');
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}
