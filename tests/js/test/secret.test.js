// The secret is required on the Shape API and admin routes, and never appears in logs.

import assert from 'node:assert/strict';

import { request, shapePath } from '../support/shape.js';
import { voltTest } from '../support/volt.js';

const SECRET = 'do-not-log-this-4d9f2c';

voltTest(
  'the secret never appears in the logs, whatever the requests carry',
  {
    setup: 'CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1);',
    secret: SECRET,
    env: { ELECTRIC_LOG_LEVEL: 'debug' },
  },
  async ({ volt }) => {
    const ok = await request(volt, shapePath({ table: 'items', offset: '-1', secret: SECRET }));
    assert.equal(ok.status, 200);
    for (const path of ['/v1/admin/tree', '/admin', '/v1/admin/stats']) {
      assert.equal((await request(volt, path)).status, 401, path);
      assert.equal((await request(volt, `${path}?secret=${SECRET}`)).status, 200, path);
    }
    // Errors and bad requests that carry it too.
    await request(volt, shapePath({ table: 'nope', offset: '-1', secret: SECRET }));
    await request(volt, shapePath({ table: 'items', offset: 'x', secret: SECRET }));
    await request(volt, shapePath({ table: 'items', offset: '-1', secret: `${SECRET}x` }));
    assert.ok(volt.logs().length > 0);
    assert.ok(!volt.logs().includes(SECRET), 'the secret was logged');
  },
);
