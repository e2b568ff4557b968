/**
 * The application tables of the example: one per CSV file of the NetBox demo
 * data, named like NetBox's own tables, plus the two circuits tables that the
 * search index declarations name but the data does not include.
 */

/** A foreign key column and the table (and its display column) it points to. */
export interface Reference {
  readonly table: string;
  /** Column of the referenced table that names the object. Default: `name`. */
  readonly column?: string;
}

export interface ApplicationTable {
  readonly table: string;
  /** CSV file with the rows, or undefined for a table that starts empty. */
  readonly file?: string;
  /** Object type of the search index over this table, when it has one. */
  readonly objectType?: string;
  /** Columns of a table without a CSV file: name to SQL type. */
  readonly columns?: Readonly<Record<string, string>>;
  /** SQL types of columns that the naming rules in `columnType` would get wrong. */
  readonly columnTypes?: Readonly<Record<string, string>>;
  /** Foreign key columns, used to store or display a related object's name. */
  readonly references?: Readonly<Record<string, Reference>>;
  /** Display attributes that map to another column than their name or `<name>_id`. */
  readonly displayColumns?: Readonly<Record<string, string>>;
}

const TENANT: Reference = { table: 'tenancy_tenant' };
const SITE: Reference = { table: 'dcim_site' };
const LOCATION: Reference = { table: 'dcim_location' };
const PLATFORM: Reference = { table: 'dcim_platform' };
const VRF: Reference = { table: 'ipam_vrf' };
const MANUFACTURER: Reference = { table: 'dcim_manufacturer' };

/**
 * Every application table in load order: a table comes after the tables its
 * foreign keys point to. Devices and virtual chassis point to each other (a
 * chassis names its master device), so the tables have no foreign key constraints.
 */
export const APPLICATION_TABLES: readonly ApplicationTable[] = [
  { table: 'django_content_type', file: 'content_types.csv' },
  {
    table: 'extras_customfield',
    file: 'custom_fields.csv',
    columnTypes: { search_weight: 'integer' },
  },
  {
    table: 'extras_customfield_object_types',
    file: 'custom_field_object_types.csv',
    references: { customfield_id: { table: 'extras_customfield' } },
  },
  {
    table: 'dcim_region',
    file: 'regions.csv',
    objectType: 'dcim.region',
    columnTypes: { level: 'integer', tree_id: 'integer', lft: 'integer', rght: 'integer' },
    references: { parent_id: { table: 'dcim_region' } },
  },
  {
    table: 'dcim_sitegroup',
    file: 'site_groups.csv',
    objectType: 'dcim.sitegroup',
    columnTypes: { level: 'integer' },
    references: { parent_id: { table: 'dcim_sitegroup' } },
  },
  {
    table: 'tenancy_tenantgroup',
    file: 'tenant_groups.csv',
    objectType: 'tenancy.tenantgroup',
    references: { parent_id: { table: 'tenancy_tenantgroup' } },
  },
  {
    table: 'tenancy_tenant',
    file: 'tenants.csv',
    objectType: 'tenancy.tenant',
    references: { group_id: { table: 'tenancy_tenantgroup' } },
  },
  {
    table: 'dcim_site',
    file: 'sites.csv',
    objectType: 'dcim.site',
    columnTypes: { latitude: 'numeric(8,6)', longitude: 'numeric(9,6)' },
    references: { region_id: { table: 'dcim_region' }, group_id: { table: 'dcim_sitegroup' }, tenant_id: TENANT },
  },
  {
    table: 'dcim_location',
    file: 'locations.csv',
    objectType: 'dcim.location',
    columnTypes: { level: 'integer' },
    references: { site_id: SITE, parent_id: LOCATION, tenant_id: TENANT },
  },
  { table: 'dcim_rackrole', file: 'rack_roles.csv', objectType: 'dcim.rackrole' },
  {
    table: 'dcim_rack',
    file: 'racks.csv',
    objectType: 'dcim.rack',
    // NetBox's facility_id is the rack's identifier within its facility, not a foreign key.
    columnTypes: { facility_id: 'text', u_height: 'smallint' },
    references: { site_id: SITE, location_id: LOCATION, tenant_id: TENANT, role_id: { table: 'dcim_rackrole' } },
  },
  { table: 'dcim_manufacturer', file: 'manufacturers.csv', objectType: 'dcim.manufacturer' },
  {
    table: 'dcim_devicetype',
    file: 'device_types.csv',
    objectType: 'dcim.devicetype',
    columnTypes: { u_height: 'numeric(4,1)' },
    references: { manufacturer_id: MANUFACTURER },
  },
  { table: 'dcim_devicerole', file: 'device_roles.csv', objectType: 'dcim.devicerole' },
  {
    table: 'dcim_platform',
    file: 'platforms.csv',
    objectType: 'dcim.platform',
    references: { manufacturer_id: MANUFACTURER },
  },
  {
    table: 'dcim_device',
    file: 'devices.csv',
    objectType: 'dcim.device',
    columnTypes: { position: 'numeric(4,1)', vc_position: 'smallint', vc_priority: 'smallint' },
    references: {
      site_id: SITE,
      location_id: LOCATION,
      rack_id: { table: 'dcim_rack' },
      device_type_id: { table: 'dcim_devicetype', column: 'model' },
      role_id: { table: 'dcim_devicerole' },
      tenant_id: TENANT,
      platform_id: PLATFORM,
      virtual_chassis_id: { table: 'dcim_virtualchassis' },
      cluster_id: { table: 'virtualization_cluster' },
    },
  },
  {
    table: 'dcim_virtualchassis',
    file: 'virtual_chassis.csv',
    objectType: 'dcim.virtualchassis',
    references: { master_id: { table: 'dcim_device' } },
  },
  {
    table: 'dcim_interface',
    file: 'interfaces.csv',
    objectType: 'dcim.interface',
    columnTypes: { mtu: 'integer', speed: 'integer' },
    references: { device_id: { table: 'dcim_device' }, vrf_id: VRF },
  },
  {
    table: 'ipam_vrf',
    file: 'vrfs.csv',
    objectType: 'ipam.vrf',
    references: { tenant_id: TENANT },
  },
  {
    table: 'ipam_role',
    file: 'ipam_roles.csv',
    objectType: 'ipam.role',
    columnTypes: { weight: 'smallint' },
  },
  {
    table: 'ipam_vlangroup',
    file: 'vlan_groups.csv',
    objectType: 'ipam.vlangroup',
    columnTypes: { vid_ranges: 'int4range[]' },
    // The scope type is a content type; the dump's label column already contains its `app.model` name.
    displayColumns: { scope_type: 'scope_type_label' },
  },
  {
    table: 'ipam_vlan',
    file: 'vlans.csv',
    objectType: 'ipam.vlan',
    columnTypes: { vid: 'smallint' },
    references: { group_id: { table: 'ipam_vlangroup' }, site_id: SITE, role_id: { table: 'ipam_role' }, tenant_id: TENANT },
  },
  {
    table: 'ipam_prefix',
    file: 'prefixes.csv',
    objectType: 'ipam.prefix',
    columnTypes: { prefix: 'cidr', _depth: 'smallint', _children: 'integer' },
    references: {
      vrf_id: VRF,
      tenant_id: TENANT,
      vlan_id: { table: 'ipam_vlan' },
      role_id: { table: 'ipam_role' },
      _site_id: SITE,
    },
    // NOTE: every scope in the demo data is a site. A prefix scoped to a region,
    // site group or location displays the site that NetBox cached in `_site_id`
    // (none for a region or site group scope).
    displayColumns: { scope: '_site_id' },
  },
  {
    table: 'ipam_ipaddress',
    file: 'ip_addresses.csv',
    objectType: 'ipam.ipaddress',
    columnTypes: { address: 'inet' },
    references: { vrf_id: VRF, tenant_id: TENANT },
  },
  {
    table: 'virtualization_cluster',
    file: 'clusters.csv',
    references: { tenant_id: TENANT, _site_id: SITE },
  },
  {
    table: 'virtualization_virtualmachine',
    file: 'virtual_machines.csv',
    objectType: 'virtualization.virtualmachine',
    columnTypes: { vcpus: 'numeric(6,2)', memory: 'integer', disk: 'integer' },
    references: {
      site_id: SITE,
      cluster_id: { table: 'virtualization_cluster' },
      device_id: { table: 'dcim_device' },
      role_id: { table: 'dcim_devicerole' },
      tenant_id: TENANT,
      platform_id: PLATFORM,
    },
  },
  {
    table: 'virtualization_vminterface',
    file: 'vm_interfaces.csv',
    objectType: 'virtualization.vminterface',
    columnTypes: { mtu: 'integer' },
    references: { virtual_machine_id: { table: 'virtualization_virtualmachine' }, vrf_id: VRF },
  },
  {
    table: 'circuits_provider',
    objectType: 'circuits.provider',
    columns: { id: 'bigint', name: 'text', slug: 'text', description: 'text', comments: 'text' },
  },
  {
    table: 'circuits_circuit',
    objectType: 'circuits.circuit',
    columns: {
      id: 'bigint',
      cid: 'text',
      provider_id: 'bigint',
      status: 'text',
      tenant_id: 'bigint',
      description: 'text',
      comments: 'text',
    },
    references: { provider_id: { table: 'circuits_provider' }, tenant_id: TENANT },
  },
];

const BOOLEAN_COLUMNS = new Set([
  'enabled',
  'mgmt_only',
  'mark_connected',
  'is_pool',
  'mark_utilized',
  'is_full_depth',
  'vm_role',
  'enforce_unique',
  'required',
  'unique',
]);

/**
 * Returns the SQL type of a CSV column: the table's override, else `bigint`
 * for ids and foreign keys, `jsonb` for custom field data, `boolean` for
 * NetBox's flag columns, and `text` for the rest.
 */
export function columnType(table: ApplicationTable, column: string): string {
  const override = table.columnTypes?.[column];
  if (override !== undefined) return override;
  if (column === 'id' || column.endsWith('_id')) return 'bigint';
  if (column === 'custom_field_data') return 'jsonb';
  if (BOOLEAN_COLUMNS.has(column)) return 'boolean';
  return 'text';
}

/** Returns the catalogue entry of `table`, or throws naming it. */
export function findApplicationTable(table: string): ApplicationTable {
  const found = APPLICATION_TABLES.find((entry) => entry.table === table);
  if (found === undefined) throw new Error(`Unknown application table "${table}"`);
  return found;
}
