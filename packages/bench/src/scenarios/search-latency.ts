import type { Lookup, SearchOutbox } from '@search-outbox/core';
import { createSearchOutbox, CACHE_TABLE } from '@search-outbox/core';
import { sql, type Kysely } from 'kysely';
import type { BenchContext } from '../context.js';
import { medianOf, type Figure, type Ratio, type ScenarioResult, type TargetCheck } from '../results.js';
import { prepareScaledData } from '../scale.js';
import type { Scenario } from '../scenario.js';
import { summarize, time } from '../stats.js';

const CACHE_SIZES = { smoke: [2_000], default: [10_000, 100_000], full: [10_000, 100_000, 1_000_000] } as const;
/** Queries per lookup and run with the value indexes, and without them (a scan per query, so fewer). */
const QUERIES = { smoke: { indexed: 10, scan: 5 }, default: { indexed: 100, scan: 20 }, full: { indexed: 100, scan: 20 } } as const;
const SEED = 20_240_601;
const TARGET_P99_MS = 50;
const TARGET_ROWS = 1_000_000;

type QueryKind = Lookup | 'ip';
const KINDS: readonly QueryKind[] = ['partial', 'exact', 'startswith', 'endswith', 'regex', 'ip'];

interface Query {
  readonly kind: QueryKind;
  readonly text: string;
}

/**
 * Search latency per lookup at several cache sizes, with the cache's value
 * indexes (trigram GIN, lower-prefix btree, inet host btree) and with them
 * dropped. The queries are derived from values sampled from the cache with
 * a fixed seed, so every run and size uses the same recipe.
 */
export const searchLatencyScenario: Scenario = {
  id: 'search-latency',
  title: 'Search latency per lookup',
  async run(context: BenchContext): Promise<ScenarioResult> {
    const figures: Figure[] = [];
    const ratios: Ratio[] = [];
    const targets: TargetCheck[] = [];
    const sizes: string[] = [];
    const counts = QUERIES[context.size];

    for (const targetRows of CACHE_SIZES[context.size]) {
      const { data, counts: scaled } = await prepareScaledData(context, `search_${targetRows}`, { cacheRows: targetRows }, { fillCache: true });
      try {
        const db = data.database.db;
        const outbox = createSearchOutbox({ db, indexes: data.registry, dispatcher: 'none' });
        const rows = scaled.cacheRows;
        sizes.push(String(rows));
        const queries = await sampleQueries(db, Math.max(counts.indexed, counts.scan));

        for (const indexed of [true, false]) {
          const dropped = indexed ? [] : await dropValueIndexes(db);
          try {
            const perQuery = indexed ? counts.indexed : counts.scan;
            for (const kind of KINDS) {
              const chosen = queries.filter((query) => query.kind === kind).slice(0, perQuery);
              const p50: number[] = [];
              const p99: number[] = [];
              for (let run = 0; run < context.runs; run += 1) {
                const samples = await measureQueries(outbox, chosen);
                const summary = summarize(samples);
                p50.push(percentile(samples, 0.5));
                p99.push(summary.p99);
              }
              const label = `${rows} rows, ${indexed ? 'indexed' : 'no value index'}, ${kind}`;
              figures.push({ label: `${label}: p50`, unit: 'ms', summary: summarize(p50) });
              figures.push({ label: `${label}: p99`, unit: 'ms', summary: summarize(p99) });
            }
            context.log(`search-latency: ${rows} rows, ${indexed ? 'with' : 'without'} value indexes done`);
          } finally {
            await restoreIndexes(db, dropped);
          }
        }

        for (const kind of KINDS) {
          const withIndex = `${rows} rows, indexed, ${kind}: p99`;
          const without = `${rows} rows, no value index, ${kind}: p99`;
          ratios.push({
            label: `${rows} rows, ${kind}: p99 with / without value index`,
            figure: withIndex,
            baseline: without,
            value: medianOf(figures, withIndex) / medianOf(figures, without),
          });
        }
        if (targetRows === TARGET_ROWS || targetRows === Math.max(...CACHE_SIZES[context.size])) {
          const p99 = medianOf(figures, `${rows} rows, indexed, partial: p99`);
          const met = targetRows === TARGET_ROWS && p99 <= TARGET_P99_MS;
          targets.push({
            target: `partial-lookup p99 ≤ ${TARGET_P99_MS} ms at ${TARGET_ROWS} cache rows`,
            measured: `${p99.toFixed(1)} ms at ${rows} cache rows (median of ${context.runs} run${context.runs === 1 ? '' : 's'})`,
            met,
            ...(met
              ? {}
              : {
                  reason:
                    targetRows !== TARGET_ROWS
                      ? `This run measured up to ${rows} cache rows only; run with --size full to check the target at ${TARGET_ROWS}.`
                      : 'A 3 to 6 character substring matches a large share of the cache, and the search reads every matching row to rank them by weight before it keeps the best 1000. An index that yields rows in weight order, or a bound on the rows read before ranking, would close it.',
                }),
          });
        }
      } finally {
        await data.database.destroy();
      }
    }

    return {
      id: this.id,
      title: this.title,
      parameters: {
        'cache rows': sizes.join(', '),
        'queries per lookup and run (indexed)': counts.indexed,
        'queries per lookup and run (no value index)': counts.scan,
        seed: SEED,
        limit: 50,
      },
      figures,
      ratios,
      targets,
      notes: [
        'Each search is one call of SearchOutbox.search (one transaction: the matching rows, then the display attributes from the live objects), timed in the client.',
        'Queries: values sampled from the cache with a fixed seed. partial is a 3 to 6 character substring, exact the whole value, startswith and endswith a 3 to 6 character prefix or suffix, regex `^prefix.*suffix$`, ip an address of an IP address object (exact).',
        'The p99 of one run is its nearest-rank 99th percentile, which equals the slowest query when a run has fewer than 100 queries.',
        '"no value index" drops the trigram, lower-prefix and inet host indexes and recreates them afterwards; the primary key stays.',
      ],
    };
  },
};

async function measureQueries(outbox: SearchOutbox, queries: readonly Query[]): Promise<number[]> {
  const samples: number[] = [];
  for (const query of queries) {
    const lookup: Lookup = query.kind === 'ip' ? 'exact' : query.kind;
    samples.push(await time(() => outbox.search({ query: query.text, lookup, limit: 50, timeoutMs: 600_000 })));
  }
  return samples;
}

/** Samples cache values with a fixed seed and derives `count` queries of each kind from them. */
async function sampleQueries(db: Kysely<any>, count: number): Promise<Query[]> {
  const random = mulberry32(SEED);
  const text = await sql<{ value: string }>`
    SELECT value FROM ${sql.id(CACHE_TABLE)}
    WHERE type = 'str' AND length(value) BETWEEN 6 AND 200
    ORDER BY md5(object_type || object_id || field || ${String(SEED)}) LIMIT ${count * 5}
  `.execute(db);
  const addresses = await sql<{ value: string }>`
    SELECT host(value::inet) AS value FROM ${sql.id(CACHE_TABLE)}
    WHERE type = 'inet'
    ORDER BY md5(object_type || object_id || field || ${String(SEED)}) LIMIT ${count}
  `.execute(db);
  const values = text.rows.map((row) => row.value);
  if (values.length === 0 || addresses.rows.length === 0) throw new Error('The cache has no text or inet values to sample queries from');

  const pick = (index: number): string => values[index % values.length] as string;
  const piece = (value: string): number => 3 + Math.floor(random() * Math.min(4, value.length - 2));
  const queries: Query[] = [];
  for (let index = 0; index < count; index += 1) {
    const value = pick(index * 5);
    const length = piece(value);
    const start = Math.floor(random() * (value.length - length + 1));
    queries.push({ kind: 'partial', text: value.slice(start, start + length) });
    queries.push({ kind: 'exact', text: pick(index * 5 + 1) });
    const prefixValue = pick(index * 5 + 2);
    queries.push({ kind: 'startswith', text: prefixValue.slice(0, piece(prefixValue)) });
    const suffixValue = pick(index * 5 + 3);
    queries.push({ kind: 'endswith', text: suffixValue.slice(-piece(suffixValue)) });
    const regexValue = pick(index * 5 + 4);
    queries.push({ kind: 'regex', text: `^${escapeRegex(regexValue.slice(0, 3))}.*${escapeRegex(regexValue.slice(-2))}$` });
    queries.push({ kind: 'ip', text: addresses.rows[index % addresses.rows.length]?.value as string });
  }
  return queries.filter((query) => query.text.trim().length > 0);
}

/** Drops the cache's value indexes and returns their definitions. */
async function dropValueIndexes(db: Kysely<any>): Promise<string[]> {
  const result = await sql<{ indexname: string; indexdef: string }>`
    SELECT i.indexname, i.indexdef FROM pg_indexes AS i
    WHERE i.schemaname = 'public' AND i.tablename = ${CACHE_TABLE}
      AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
  `.execute(db);
  for (const row of result.rows) await sql`DROP INDEX ${sql.id('public', row.indexname)}`.execute(db);
  await sql`ANALYZE ${sql.id(CACHE_TABLE)}`.execute(db);
  return result.rows.map((row) => row.indexdef);
}

async function restoreIndexes(db: Kysely<any>, definitions: readonly string[]): Promise<void> {
  if (definitions.length === 0) return;
  // The definitions come from pg_indexes of this bench database.
  for (const definition of definitions) await sql.raw(definition).execute(db);
  await sql`ANALYZE ${sql.id(CACHE_TABLE)}`.execute(db);
}

function percentile(samples: readonly number[], fraction: number): number {
  const sorted = [...samples].sort((left, right) => left - right);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))] as number;
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Small seeded PRNG (mulberry32), so the derived queries are the same in every run. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296;
  };
}
