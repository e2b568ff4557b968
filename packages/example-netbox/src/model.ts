import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { VALUE_TYPES, type DisplayAttribute, type IndexedField, type SearchIndex, type ValueType } from '@search-outbox/core';
import { APPLICATION_TABLES, columnType, type ApplicationTable } from './catalogue.js';
import { readCsv, readCsvHeader } from './csv.js';
import { resolveDataDirectory } from './data-directory.js';

/** SQL type of a column added for a declared field that the CSV file lacks. */
const SQL_TYPE_OF_VALUE: Readonly<Record<ValueType, string>> = {
  str: 'text',
  int: 'integer',
  float: 'double precision',
  inet: 'inet',
  cidr: 'cidr',
};

/**
 * Value types of NetBox custom field types that the search cache stores;
 * custom fields of other types (boolean, select, object, ...) are not indexed.
 */
const CUSTOM_FIELD_VALUE_TYPES: Readonly<Record<string, ValueType>> = {
  text: 'str',
  longtext: 'str',
  url: 'str',
  date: 'str',
  integer: 'int',
  decimal: 'float',
};

/** NetBox's default search weight of a custom field. */
const DEFAULT_CUSTOM_FIELD_WEIGHT = 1000;

export interface TableColumn {
  readonly name: string;
  readonly type: string;
}

/** An application table with its final column list. */
export interface TableDefinition {
  readonly table: string;
  readonly file: string | undefined;
  readonly objectType: string | undefined;
  readonly columns: readonly TableColumn[];
  /** Columns added because a search index declares a field that the CSV file lacks; always NULL. */
  readonly addedColumns: readonly string[];
}

/** A declared display attribute or custom field that the example does not index, with the reason. */
export interface SkippedDeclaration {
  readonly objectType: string;
  readonly name: string;
  readonly reason: string;
}

/** The example application: its tables and the search indexes over them. */
export interface DemoModel {
  readonly dataDirectory: string;
  readonly tables: readonly TableDefinition[];
  readonly indexes: readonly SearchIndex[];
  readonly skipped: readonly SkippedDeclaration[];
}

interface DeclaredModel {
  readonly fields: readonly { readonly name: string; readonly weight: number; readonly type: ValueType }[];
  readonly display: readonly string[];
}

/**
 * Builds the example's tables and search indexes from the demo data: the
 * CSV headers give the columns, `search-indexes.json` gives each model's
 * fields and display attributes, and `custom_fields.csv` with
 * `custom_field_object_types.csv` give the `cf_<name>` fields.
 */
export function buildDemoModel(dataDirectory?: string): DemoModel {
  const directory = resolveDataDirectory(dataDirectory);
  const declared = readDeclarations(directory);
  const customFields = readCustomFields(directory);
  const skipped: SkippedDeclaration[] = [];
  const tables: TableDefinition[] = [];
  const indexes: SearchIndex[] = [];

  for (const entry of APPLICATION_TABLES) {
    const baseColumns = readBaseColumns(directory, entry);
    const model = entry.objectType === undefined ? undefined : declared.get(entry.objectType);
    if (entry.objectType !== undefined && model === undefined) {
      throw new Error(`search-indexes.json in ${directory} declares no model "${entry.objectType}"`);
    }
    if (entry.objectType === undefined || model === undefined) {
      tables.push({ table: entry.table, file: entry.file, objectType: undefined, columns: baseColumns, addedColumns: [] });
      continue;
    }

    const columnNames = new Set(baseColumns.map((column) => column.name));
    const addedColumns: TableColumn[] = [];
    const fields = model.fields.map((field) => declareField(entry, columnNames, field, addedColumns));
    for (const column of addedColumns) columnNames.add(column.name);
    fields.push(...declareCustomFields(entry, columnNames, customFields, skipped));
    const display = declareDisplay(entry, columnNames, model.display, skipped);

    tables.push({
      table: entry.table,
      file: entry.file,
      objectType: entry.objectType,
      columns: [...baseColumns, ...addedColumns],
      addedColumns: addedColumns.map((column) => column.name),
    });
    indexes.push({ objectType: entry.objectType, table: entry.table, fields, display });
  }

  const unknownModels = [...declared.keys()].filter((name) => !APPLICATION_TABLES.some((t) => t.objectType === name));
  if (unknownModels.length > 0) {
    throw new Error(`search-indexes.json declares models with no application table: ${unknownModels.join(', ')}`);
  }
  return { dataDirectory: directory, tables, indexes, skipped };
}

/** Returns the search index declarations of the example application. */
export function loadDemoIndexes(dataDirectory?: string): SearchIndex[] {
  return [...buildDemoModel(dataDirectory).indexes];
}

function readBaseColumns(directory: string, entry: ApplicationTable): TableColumn[] {
  if (entry.file === undefined) {
    return Object.entries(entry.columns ?? {}).map(([name, type]) => ({ name, type }));
  }
  return readCsvHeader(directory, entry.file).map((name) => ({ name, type: columnType(entry, name) }));
}

/**
 * Maps a declared field to its source: the column of the same name, else the
 * name of the object that the `<field>_id` foreign key points to, else a new
 * NULL column so that the declaration stays as NetBox has it.
 */
function declareField(
  entry: ApplicationTable,
  columnNames: ReadonlySet<string>,
  field: DeclaredModel['fields'][number],
  addedColumns: TableColumn[],
): IndexedField {
  const { name, weight, type } = field;
  if (columnNames.has(name)) return { name, weight, type };

  const foreignKey = `${name}_id`;
  const reference = entry.references?.[foreignKey];
  if (columnNames.has(foreignKey) && reference !== undefined) {
    const column = reference.column ?? 'name';
    return { name, weight, type, source: { related: { foreignKey, table: reference.table, column } } };
  }

  addedColumns.push({ name, type: SQL_TYPE_OF_VALUE[type] });
  return { name, weight, type };
}

function declareDisplay(
  entry: ApplicationTable,
  columnNames: ReadonlySet<string>,
  attributes: readonly string[],
  skipped: SkippedDeclaration[],
): DisplayAttribute[] {
  const display: DisplayAttribute[] = [];
  for (const name of attributes) {
    const column = entry.displayColumns?.[name] ?? name;
    const foreignKey = columnNames.has(column) ? column : `${name}_id`;
    const reference = entry.references?.[foreignKey];

    if (columnNames.has(foreignKey) && reference !== undefined) {
      const related = { foreignKey, table: reference.table, column: reference.column ?? 'name' };
      display.push({ name, source: { related } });
    } else if (columnNames.has(column)) {
      display.push(column === name ? { name } : { name, source: { column } });
    } else {
      skipped.push({
        objectType: entry.objectType ?? entry.table,
        name,
        reason: `display attribute has no column "${name}" or foreign key "${name}_id" with a table in the demo data`,
      });
    }
  }
  return display;
}

interface CustomField {
  readonly name: string;
  readonly type: string;
  readonly weight: number;
  readonly objectTypes: readonly string[];
}

function declareCustomFields(
  entry: ApplicationTable,
  columnNames: ReadonlySet<string>,
  customFields: readonly CustomField[],
  skipped: SkippedDeclaration[],
): IndexedField[] {
  const objectType = entry.objectType ?? entry.table;
  const fields: IndexedField[] = [];
  for (const customField of customFields.filter((field) => field.objectTypes.includes(objectType))) {
    const name = `cf_${customField.name}`;
    const valueType = CUSTOM_FIELD_VALUE_TYPES[customField.type];
    if (valueType === undefined) {
      skipped.push({ objectType, name, reason: `custom fields of type "${customField.type}" are not searchable` });
    } else if (customField.weight === 0) {
      // NetBox ignores custom fields whose search weight is zero.
      skipped.push({ objectType, name, reason: 'search weight 0 turns search off for this custom field' });
    } else if (!columnNames.has('custom_field_data')) {
      skipped.push({ objectType, name, reason: `table ${entry.table} has no custom_field_data column` });
    } else {
      fields.push({
        name,
        weight: customField.weight,
        type: valueType,
        source: { json: { column: 'custom_field_data', key: customField.name } },
      });
    }
  }
  return fields;
}

function readCustomFields(directory: string): CustomField[] {
  const assignments = readCsv(directory, 'custom_field_object_types.csv');
  return readCsv(directory, 'custom_fields.csv').map((record) => {
    const name = requireCell(record.name, 'custom_fields.csv', 'name');
    const weightText = record.search_weight;
    const weight = weightText === null || weightText === undefined ? DEFAULT_CUSTOM_FIELD_WEIGHT : Number(weightText);
    if (!Number.isInteger(weight)) {
      throw new Error(`custom_fields.csv: custom field "${name}" has search_weight "${weightText}"; expected an integer`);
    }
    const objectTypes = assignments
      .filter((assignment) => assignment.customfield_id === record.id)
      .map((assignment) => requireCell(assignment.objecttype_label, 'custom_field_object_types.csv', 'objecttype_label'));
    return { name, type: requireCell(record.type, 'custom_fields.csv', 'type'), weight, objectTypes };
  });
}

function requireCell(value: string | null | undefined, file: string, column: string): string {
  if (value === null || value === undefined) throw new Error(`${file}: a row has no value in column "${column}"`);
  return value;
}

/** Reads and checks the shape of `search-indexes.json`; `defineIndexes` checks the rest at startup. */
function readDeclarations(directory: string): Map<string, DeclaredModel> {
  const path = join(directory, 'search-indexes.json');
  let document: unknown;
  try {
    document = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new Error(`Cannot read ${path}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  const models = (document as { models?: unknown } | null)?.models;
  if (typeof models !== 'object' || models === null) {
    throw new Error(`${path} has no "models" object`);
  }

  const declared = new Map<string, DeclaredModel>();
  for (const [objectType, model] of Object.entries(models as Record<string, unknown>)) {
    const { fields, display_attrs: display } = (model ?? {}) as { fields?: unknown; display_attrs?: unknown };
    if (!Array.isArray(fields)) throw new Error(`${path}: model "${objectType}" has no "fields" array`);
    const checkedFields = fields.map((field: unknown) => {
      const { name, weight, type } = (field ?? {}) as { name?: unknown; weight?: unknown; type?: unknown };
      if (typeof name !== 'string' || typeof weight !== 'number' || !VALUE_TYPES.includes(type as ValueType)) {
        throw new Error(
          `${path}: model "${objectType}" has an invalid field ${JSON.stringify(field)}; ` +
            `expected {"name": string, "weight": number, "type": one of ${VALUE_TYPES.join(', ')}}`,
        );
      }
      return { name, weight, type: type as ValueType };
    });
    const displayNames = display === undefined ? [] : display;
    if (!Array.isArray(displayNames) || !displayNames.every((item) => typeof item === 'string')) {
      throw new Error(`${path}: model "${objectType}" has "display_attrs" that is not an array of strings`);
    }
    declared.set(objectType, { fields: checkedFields, display: displayNames });
  }
  return declared;
}
