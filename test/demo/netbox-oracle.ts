import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import type { Kysely } from 'kysely';

/**
 * The cache rows that the NetBox demo data implies, computed straight from
 * the CSV files and `search-indexes.json`, without the example package's
 * model: a test oracle for the drain and the rebuild.
 */

/** One cache row, as the cache table stores it. */
export interface CacheRow {
  readonly object_type: string;
  readonly object_id: string;
  readonly field: string;
  readonly type: string;
  readonly value: string;
  readonly weight: number;
}

/** CSV file of each searchable model; the circuits models have no data and therefore no rows. */
const MODEL_FILES: Readonly<Record<string, string | null>> = {
  'dcim.site': 'sites.csv',
  'dcim.device': 'devices.csv',
  'dcim.interface': 'interfaces.csv',
  'ipam.ipaddress': 'ip_addresses.csv',
  'ipam.prefix': 'prefixes.csv',
  'ipam.vlan': 'vlans.csv',
  'tenancy.tenant': 'tenants.csv',
  'dcim.rack': 'racks.csv',
  'dcim.region': 'regions.csv',
  'dcim.sitegroup': 'site_groups.csv',
  'dcim.location': 'locations.csv',
  'dcim.devicerole': 'device_roles.csv',
  'dcim.devicetype': 'device_types.csv',
  'dcim.manufacturer': 'manufacturers.csv',
  'dcim.platform': 'platforms.csv',
  'dcim.virtualchassis': 'virtual_chassis.csv',
  'dcim.rackrole': 'rack_roles.csv',
  'ipam.vrf': 'vrfs.csv',
  'ipam.vlangroup': 'vlan_groups.csv',
  'ipam.role': 'ipam_roles.csv',
  'tenancy.tenantgroup': 'tenant_groups.csv',
  'virtualization.virtualmachine': 'virtual_machines.csv',
  'virtualization.vminterface': 'vm_interfaces.csv',
  'circuits.circuit': null,
  'circuits.provider': null,
};

/** Foreign-key fields: the CSV of the related object, whose `name` the cache stores. */
const FOREIGN_KEY_FILES: Readonly<Record<string, string>> = {
  'dcim.device.virtual_chassis': 'virtual_chassis.csv',
};

/**
 * Declared fields that no CSV file has, as `model.field`. The example adds
 * them as NULL columns, so they produce no rows. The list makes the oracle
 * fail if the data or the declarations change under it.
 */
export const FIELDS_MISSING_FROM_DATA = [
  'dcim.devicerole.comments',
  'dcim.location.comments',
  'dcim.manufacturer.comments',
  'dcim.platform.comments',
  'dcim.rackrole.comments',
  'dcim.region.comments',
  'dcim.sitegroup.comments',
  'ipam.role.comments',
  'ipam.vlangroup.comments',
  'tenancy.tenantgroup.comments',
];

/** A CSV record with every cell as text; an empty cell is the empty string here. */
type CsvRow = Record<string, string>;

interface DeclaredField {
  readonly name: string;
  readonly weight: number;
  readonly type: string;
}

export interface Oracle {
  readonly rows: CacheRow[];
  /** Declared fields (`model.field`) that are neither a CSV column nor a known foreign key. */
  readonly missingFields: string[];
}

export function readCsvFile(directory: string, file: string): CsvRow[] {
  return parse(readFileSync(join(directory, file), 'utf8'), { columns: true, skip_empty_lines: true }) as CsvRow[];
}

/** Computes every cache row the declarations imply for the demo data in `directory`. */
export function computeExpectedRows(directory: string): Oracle {
  const declarations = JSON.parse(readFileSync(join(directory, 'search-indexes.json'), 'utf8')) as {
    models: Record<string, { fields: DeclaredField[] }>;
  };
  const rows: CacheRow[] = [];
  const missingFields: string[] = [];

  for (const [objectType, model] of Object.entries(declarations.models)) {
    const file = MODEL_FILES[objectType];
    if (file === undefined) throw new Error(`The oracle has no CSV file for model ${objectType}`);
    if (file === null) continue;
    const records = readCsvFile(directory, file);
    const header = new Set(Object.keys(records[0] ?? {}));

    for (const field of model.fields) {
      const foreignKeyFile = FOREIGN_KEY_FILES[`${objectType}.${field.name}`];
      if (!header.has(field.name) && foreignKeyFile === undefined) {
        missingFields.push(`${objectType}.${field.name}`);
        continue;
      }
      const names = foreignKeyFile === undefined ? undefined : namesById(directory, foreignKeyFile);
      for (const record of records) {
        const raw = names === undefined ? record[field.name] : names.get(record[`${field.name}_id`] ?? '');
        const value = cacheValue(raw, field.type);
        if (value === undefined) continue;
        rows.push({ object_type: objectType, object_id: record.id!, field: field.name, type: field.type, value, weight: field.weight });
      }
    }
  }

  rows.push(...customFieldRows(directory));
  return { rows, missingFields: missingFields.sort() };
}

/** Rows of custom fields: `cf_<name>` from each object's `custom_field_data`. */
function customFieldRows(directory: string): CacheRow[] {
  const valueTypes: Record<string, string> = { text: 'str', longtext: 'str', url: 'str', date: 'str', integer: 'int', decimal: 'float' };
  const assignments = readCsvFile(directory, 'custom_field_object_types.csv');
  const rows: CacheRow[] = [];
  for (const customField of readCsvFile(directory, 'custom_fields.csv')) {
    const type = valueTypes[customField.type!];
    const weight = customField.search_weight === '' ? 1000 : Number(customField.search_weight);
    if (type === undefined || weight === 0) continue;
    for (const assignment of assignments.filter((a) => a.customfield_id === customField.id)) {
      const objectType = assignment.objecttype_label!;
      const file = MODEL_FILES[objectType];
      if (file === undefined || file === null) throw new Error(`The oracle has no CSV file for model ${objectType}`);
      for (const record of readCsvFile(directory, file)) {
        const data = JSON.parse(record.custom_field_data || '{}') as Record<string, unknown>;
        const raw = data[customField.name!];
        const value = cacheValue(raw === null || raw === undefined ? undefined : String(raw), type);
        if (value === undefined) continue;
        rows.push({ object_type: objectType, object_id: record.id!, field: `cf_${customField.name}`, type, value, weight });
      }
    }
  }
  return rows;
}

function namesById(directory: string, file: string): Map<string, string> {
  return new Map(readCsvFile(directory, file).map((record) => [record.id!, record.name ?? '']));
}

/**
 * Returns the text PostgreSQL stores for a CSV cell of the given value type, or
 * undefined for no row (empty, or numeric zero). Integers lose leading zeros,
 * and an IPv4 inet with a /32 mask prints without it, as `inet::text` does.
 */
export function cacheValue(raw: string | undefined, type: string): string | undefined {
  if (raw === undefined || raw === '') return undefined;
  switch (type) {
    case 'int': {
      const value = BigInt(raw);
      return value === 0n ? undefined : value.toString();
    }
    case 'float': {
      const value = Number(raw);
      return value === 0 ? undefined : String(value);
    }
    case 'inet': {
      // The demo data has only IPv4 addresses; IPv6 would need PostgreSQL's zero compression here.
      if (raw.includes(':')) throw new Error(`The oracle does not normalise IPv6 address ${raw}`);
      return raw.endsWith('/32') ? raw.slice(0, -3) : raw;
    }
    case 'cidr':
      if (raw.includes(':')) throw new Error(`The oracle does not normalise IPv6 prefix ${raw}`);
      return raw;
    default:
      return raw;
  }
}

/** Reads every row of `<schema>.search_cache`. */
export async function readCacheRows(db: Kysely<any>, schema: string): Promise<CacheRow[]> {
  const rows = await db
    .withSchema(schema)
    .selectFrom('search_cache')
    .select(['object_type', 'object_id', 'field', 'type', 'value', 'weight'])
    .execute();
  return rows.map((row) => ({ ...row, weight: Number(row.weight) }) as CacheRow);
}

export function rowKey(row: CacheRow): string {
  return JSON.stringify([row.object_type, row.object_id, row.field, row.type, row.value, row.weight]);
}

/** Returns the rows only in `actual` and the rows only in `expected`, as sorted keys. */
export function compareRows(actual: readonly CacheRow[], expected: readonly CacheRow[]) {
  const actualKeys = new Set(actual.map(rowKey));
  const expectedKeys = new Set(expected.map(rowKey));
  return {
    unexpected: [...actualKeys].filter((key) => !expectedKeys.has(key)).sort(),
    missing: [...expectedKeys].filter((key) => !actualKeys.has(key)).sort(),
  };
}
