// Prometheus metrics (ELECTRIC_PROMETHEUS_PORT): present, and moving under load.

import assert from 'node:assert/strict';

import { openShape } from '../support/shape.js';
import { freePort, voltTest, waitFor } from '../support/volt.js';

function parse(text) {
  const values = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    values.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return values;
}

const sum = (values, prefix) =>
  [...values].filter(([k]) => k === prefix || k.startsWith(`${prefix}{`)).reduce((a, [, v]) => a + v, 0);

const metricsPort = await freePort();

voltTest(
  'Prometheus metrics are served and move under load',
  {
    setup: 'CREATE TABLE items (id int PRIMARY KEY, n int); INSERT INTO items VALUES (1, 0);',
    env: { ELECTRIC_PROMETHEUS_PORT: String(metricsPort) },
  },
  async ({ db, volt, cleanup }) => {
    const scrape = async () => parse(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text());
    const s = openShape(volt, { table: 'items' }, { cleanup });
    await s.initialRows();
    const before = await scrape();
    for (const name of [
      'volt_http_requests_total',
      'volt_admission_permits_in_use',
      'volt_mailbox_depth',
      'volt_shapes_active',
      'volt_snapshot_duration_seconds_count',
      'volt_service_active',
      'volt_storage_bytes',
    ]) {
      assert.ok([...before.keys()].some((k) => k.startsWith(name)), `${name} is exported`);
    }
    for (let i = 1; i <= 20; i++) await db.client.query(`UPDATE items SET n = ${i} WHERE id = 1`);
    await s.waitRows((rows) => rows[0]?.n === 20, 'the 20 updates');
    await waitFor(
      async () => {
        const after = await scrape();
        return (
          sum(after, 'volt_transactions_total') >= sum(before, 'volt_transactions_total') + 20 &&
          sum(after, 'volt_changes_total') >= sum(before, 'volt_changes_total') + 20 &&
          sum(after, 'volt_http_requests_total') > sum(before, 'volt_http_requests_total') &&
          sum(after, 'volt_replication_acknowledged_lsn') > sum(before, 'volt_replication_acknowledged_lsn') &&
          after.has('volt_replication_lag_bytes') &&
          sum(after, 'volt_storage_bytes') > sum(before, 'volt_storage_bytes') &&
          after.has('volt_replication_lag_seconds')
        );
      },
      { label: 'counters moving with the load' },
    );
  },
);
