import { describeValue, findTextProblem, IndexDeclarationError, UnknownObjectTypeError } from './errors.js';
import { isIdentifier } from './identifiers.js';

/**
 * Type of a cached value. `int` and `float` values of zero produce no cache
 * row, and `inet` and `cidr` values take part in IP-aware search.
 */
export type ValueType = 'str' | 'int' | 'float' | 'inet' | 'cidr';

export const VALUE_TYPES: readonly ValueType[] = ['str', 'int', 'float', 'inet', 'cidr'];

/** SQL type of a source table's primary key, used to bind object ids. */
export type KeyType = 'bigint' | 'integer' | 'text' | 'uuid';

export const KEY_TYPES: readonly KeyType[] = ['bigint', 'integer', 'text', 'uuid'];

/** Value source: a column of the source table. */
export interface ColumnSource {
  readonly column: string;
}

/** Value source: a column (default `name`) of the row that a foreign key points to. */
export interface RelatedSource {
  readonly related: {
    /** Column of the source table holding the foreign key. */
    readonly foreignKey: string;
    /** Table of the related object, in the same schema as the source table. */
    readonly table: string;
    /** Primary key column of the related table. Default: `id`. */
    readonly primaryKey?: string;
    /** Column of the related table to store. Default: `name`. */
    readonly column?: string;
  };
}

/** Value source: one key of a JSON or JSONB column, such as custom fields. */
export interface JsonSource {
  readonly json: {
    readonly column: string;
    readonly key: string;
  };
}

export type ValueSource = ColumnSource | RelatedSource | JsonSource;

/** One indexed field: each non-empty value becomes one cache row. */
export interface IndexedField {
  /** Name stored in the cache's `field` column, such as `name` or `cf_cust_id`. */
  readonly name: string;
  /** Rank of a match on this field: lower is more relevant. Integer from 0 to 32767. */
  readonly weight: number;
  /** Value type. Default: `str`. */
  readonly type?: ValueType;
  /** Source of the value. Default: the column named like the field. */
  readonly source?: ValueSource;
}

/** One display attribute shown next to a search result, read live at search time. */
export interface DisplayAttribute {
  readonly name: string;
  /** Source of the value. Default: the column named like the attribute. */
  readonly source?: ValueSource;
}

/** Equality conditions an object must meet to be indexed; `null` means IS NULL. */
export type IndexFilter = Readonly<Record<string, string | number | boolean | null>>;

/** The declaration of one searchable object type. */
export interface SearchIndex {
  /** Name of the object type in the cache, such as `dcim.site`. */
  readonly objectType: string;
  /** Source table, resolved in the schema recorded with each mark. */
  readonly table: string;
  /** Primary key column. Default: `id`. */
  readonly primaryKey?: string;
  /** SQL type of the primary key. Default: `bigint`. */
  readonly keyType?: KeyType;
  /** Indexed fields; at least one. */
  readonly fields: readonly IndexedField[];
  /** Display attributes: names of columns, or attributes with a source. Default: none. */
  readonly display?: readonly (string | DisplayAttribute)[];
  /** Only rows meeting every condition are indexed. Default: every row. */
  readonly where?: IndexFilter;
}

/** A declaration after validation, with every default applied. */
export interface ResolvedIndex {
  readonly objectType: string;
  readonly table: string;
  readonly primaryKey: string;
  readonly keyType: KeyType;
  readonly fields: readonly ResolvedField[];
  readonly display: readonly ResolvedDisplayAttribute[];
  readonly where: IndexFilter;
}

export interface ResolvedField {
  readonly name: string;
  readonly weight: number;
  readonly type: ValueType;
  readonly source: ValueSource;
}

export interface ResolvedDisplayAttribute {
  readonly name: string;
  readonly source: ValueSource;
}

/** Object type names: dotted words such as `dcim.site`, at most 100 characters. */
const OBJECT_TYPE_PATTERN = /^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$/;
const MAX_OBJECT_TYPE_LENGTH = 100;
/** Field names are stored as text, so they may be longer than an identifier. */
const FIELD_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,99}$/;
const MAX_WEIGHT = 32767;

/** The validated search indexes of an application, looked up by object type. */
export class IndexRegistry {
  readonly #byType: ReadonlyMap<string, ResolvedIndex>;

  constructor(indexes: readonly ResolvedIndex[]) {
    this.#byType = new Map(indexes.map((index) => [index.objectType, index]));
  }

  get objectTypes(): readonly string[] {
    return [...this.#byType.keys()];
  }

  get all(): readonly ResolvedIndex[] {
    return [...this.#byType.values()];
  }

  has(objectType: string): boolean {
    return this.#byType.has(objectType);
  }

  find(objectType: string): ResolvedIndex | undefined {
    return this.#byType.get(objectType);
  }

  /** Returns the index of `objectType`, or throws an error that names `path` and the value. */
  get(objectType: unknown, path = 'objectType'): ResolvedIndex {
    const index = typeof objectType === 'string' ? this.#byType.get(objectType) : undefined;
    if (index === undefined) throw new UnknownObjectTypeError(path, objectType, this.objectTypes);
    return index;
  }
}

/**
 * Validates search index declarations and applies their defaults. Throws an
 * IndexDeclarationError naming the index and the field at the first problem.
 */
export function defineIndexes(indexes: readonly SearchIndex[]): IndexRegistry {
  if (!Array.isArray(indexes)) {
    throw new IndexDeclarationError('(all)', undefined, 'declarations must be an array of search indexes');
  }
  const resolved: ResolvedIndex[] = [];
  const seen = new Set<string>();
  indexes.forEach((index, position) => {
    const result = resolveIndex(index, position);
    if (seen.has(result.objectType)) {
      throw new IndexDeclarationError(result.objectType, undefined, 'the object type is declared twice');
    }
    seen.add(result.objectType);
    resolved.push(result);
  });
  return new IndexRegistry(resolved);
}

function resolveIndex(index: SearchIndex, position: number): ResolvedIndex {
  if (typeof index !== 'object' || index === null) {
    throw new IndexDeclarationError(`#${position}`, undefined, 'a declaration must be an object');
  }
  const objectType = index.objectType;
  if (
    typeof objectType !== 'string' ||
    objectType.length > MAX_OBJECT_TYPE_LENGTH ||
    !OBJECT_TYPE_PATTERN.test(objectType)
  ) {
    throw new IndexDeclarationError(
      `#${position}`,
      undefined,
      `objectType ${describeValue(objectType)} must be dotted words such as "dcim.site" (letters, digits, underscores; at most ${MAX_OBJECT_TYPE_LENGTH} characters)`,
    );
  }
  const fail = (field: string | undefined, problem: string): never => {
    throw new IndexDeclarationError(objectType, field, problem);
  };

  requireIdentifier(index.table, 'table', fail);
  const primaryKey = index.primaryKey ?? 'id';
  requireIdentifier(primaryKey, 'primaryKey', fail);
  const keyType = index.keyType ?? 'bigint';
  if (!KEY_TYPES.includes(keyType)) {
    fail(undefined, `keyType ${describeValue(keyType)} must be one of ${KEY_TYPES.join(', ')}`);
  }

  if (!Array.isArray(index.fields) || index.fields.length === 0) {
    fail(undefined, 'fields must be a non-empty array');
  }
  const fieldNames = new Set<string>();
  // Array.from reads the holes of a sparse array as undefined, so they are rejected. map would keep them.
  const fields = Array.from(index.fields, (field, position): ResolvedField => {
    if (typeof field !== 'object' || field === null || Array.isArray(field)) {
      fail(`#${position}`, `a field must be an object with a name and a weight, not ${describeValue(field)}`);
    }
    const name = typeof field.name === 'string' ? field.name : `#${position}`;
    if (!FIELD_NAME_PATTERN.test(name)) {
      fail(
        name,
        `name ${describeValue(field.name)} must be a letter or underscore followed by letters, digits or underscores (at most 100)`,
      );
    }
    if (fieldNames.has(name)) fail(name, 'the field is declared twice');
    fieldNames.add(name);
    if (!Number.isInteger(field.weight) || field.weight < 0 || field.weight > MAX_WEIGHT) {
      fail(name, `weight ${describeValue(field.weight)} must be an integer from 0 to ${MAX_WEIGHT}`);
    }
    const type = field.type ?? 'str';
    if (!VALUE_TYPES.includes(type)) {
      fail(name, `type ${describeValue(type)} must be one of ${VALUE_TYPES.join(', ')}`);
    }
    const source = resolveSource(field.source ?? { column: name }, (problem) => fail(name, problem));
    return { name, weight: field.weight, type, source };
  });

  if (index.display !== undefined && !Array.isArray(index.display)) {
    fail(undefined, 'display must be an array of attribute names or attributes');
  }
  const display = Array.from(index.display ?? [], (attribute, position): ResolvedDisplayAttribute => {
    const declared = typeof attribute === 'string' ? { name: attribute } : attribute;
    if (typeof declared !== 'object' || declared === null || Array.isArray(declared)) {
      fail(`display #${position}`, `a display attribute must be a name or an object, not ${describeValue(attribute)}`);
    }
    const name = declared.name;
    if (typeof name !== 'string' || !FIELD_NAME_PATTERN.test(name)) {
      fail(
        `display #${position}`,
        `name ${describeValue(name)} must be a letter or underscore followed by letters, digits or underscores`,
      );
    }
    const source = resolveSource(declared.source ?? { column: name }, (problem) => fail(name, problem));
    return { name, source };
  });

  const where = index.where ?? {};
  if (typeof where !== 'object' || where === null || Array.isArray(where)) {
    fail(undefined, 'where must be an object of column names to values');
  }
  for (const [column, value] of Object.entries(where)) {
    requireIdentifier(column, `where column`, fail);
    const valid = value === null || ['string', 'boolean'].includes(typeof value) || Number.isFinite(value);
    if (!valid) {
      fail(undefined, `where value ${describeValue(value)} for column "${column}" must be a string, a finite number, a boolean or null`);
    }
    const textProblem = typeof value === 'string' ? findTextProblem(value) : undefined;
    if (textProblem !== undefined) fail(undefined, `where value ${describeValue(value)} for column "${column}" ${textProblem}`);
  }

  return { objectType, table: index.table, primaryKey, keyType, fields, display, where };
}

function resolveSource(source: ValueSource, fail: (problem: string) => never): ValueSource {
  if (typeof source !== 'object' || source === null) fail('source must be an object');
  if ('column' in source) {
    requireIdentifier(source.column, 'source column', (_, problem) => fail(problem));
    return { column: source.column };
  }
  if ('related' in source) {
    const related = source.related;
    const checkRelated = (_: string | undefined, problem: string): never => fail(problem);
    requireIdentifier(related?.foreignKey, 'related foreignKey', checkRelated);
    requireIdentifier(related.table, 'related table', checkRelated);
    const primaryKey = related.primaryKey ?? 'id';
    const column = related.column ?? 'name';
    requireIdentifier(primaryKey, 'related primaryKey', checkRelated);
    requireIdentifier(column, 'related column', checkRelated);
    return { related: { foreignKey: related.foreignKey, table: related.table, primaryKey, column } };
  }
  if ('json' in source) {
    const json = source.json;
    requireIdentifier(json?.column, 'json column', (_, problem) => fail(problem));
    if (typeof json.key !== 'string' || json.key.length === 0 || json.key.length > 200) {
      fail(`json key ${describeValue(json.key)} must be a non-empty string of at most 200 characters`);
    }
    const textProblem = findTextProblem(json.key);
    if (textProblem !== undefined) fail(`json key ${describeValue(json.key)} ${textProblem}`);
    return { json: { column: json.column, key: json.key } };
  }
  return fail('source must have one of the keys column, related or json');
}

function requireIdentifier(
  value: unknown,
  what: string,
  fail: (field: string | undefined, problem: string) => never,
): void {
  if (!isIdentifier(value)) {
    fail(
      undefined,
      `${what} ${describeValue(value)} is not a valid identifier; use a letter or underscore followed by letters, digits or underscores (at most 63)`,
    );
  }
}
