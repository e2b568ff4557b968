import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';

/** One CSV record: column name to cell text, with an empty cell read as SQL NULL. */
export type CsvRecord = Record<string, string | null>;

/** Reads a whole CSV file of the demo data; the first line contains the column names. */
export function readCsv(directory: string, file: string): CsvRecord[] {
  const text = readFileSync(join(directory, file), 'utf8');
  const records = parse(text, { columns: true, skip_empty_lines: true }) as Record<string, string>[];
  return records.map((record) => {
    const converted: CsvRecord = {};
    for (const [column, cell] of Object.entries(record)) {
      converted[column] = cell === '' ? null : cell;
    }
    return converted;
  });
}

/** Reads only the column names (the first line) of a CSV file. */
export function readCsvHeader(directory: string, file: string): string[] {
  const text = readFileSync(join(directory, file), 'utf8');
  const firstLine = text.slice(0, text.indexOf('\n') === -1 ? undefined : text.indexOf('\n'));
  const [header] = parse(firstLine, { to_line: 1 }) as string[][];
  if (header === undefined || header.length === 0) {
    throw new Error(`CSV file ${file} in ${directory} has no header line`);
  }
  return header;
}
