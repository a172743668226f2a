// Health, the admin actor tree and API-secret authentication.

import assert from 'node:assert/strict';

import { byId, openShape, request, shapePath } from '../support/shape.js';
import { voltTest, waitFor } from '../support/volt.js';

const ITEMS = `
  CREATE TABLE items (id int PRIMARY KEY, title text, qty int, done bool);
  INSERT INTO items VALUES (1, 'one', 1, true);
`;
const SECRET = 's3cret';

voltTest('health reports active', { setup: ITEMS, secret: SECRET }, async ({ volt }) => {
  // Open even though a secret is configured.
  const res = await request(volt, '/v1/health');
  assert.equal(res.status, 200, res.text);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  assert.deepEqual(res.body, { status: 'active' });
});

/** Depth-first list of the nodes of the admin tree, checking each node's shape. */
function flatten(root) {
  const nodes = [];
  const visit = (node, parentId) => {
    const where = JSON.stringify({ ...node, children: `[${node?.children?.length ?? '?'}]` });
    assert.equal(typeof node, 'object', `node is an object: ${where}`);
    assert.equal(typeof node.name, 'string', `name: ${where}`);
    assert.equal(typeof node.kind, 'string', `kind: ${where}`);
    assert.ok(typeof node.id === 'string' || typeof node.id === 'number', `id: ${where}`);
    assert.equal(typeof node.status, 'string', `status: ${where}`);
    assert.equal(typeof node.restarts, 'number', `restarts: ${where}`);
    assert.ok(Array.isArray(node.children), `children: ${where}`);
    assert.deepEqual(node.parent ?? null, parentId, `parent of ${where}`);
    nodes.push(node);
    for (const child of node.children) visit(child, node.id);
  };
  visit(root, null);
  return nodes;
}

voltTest('admin tree lists the live actor tree', { setup: ITEMS }, async ({ volt }) => {
  const tree = async () => {
    const res = await request(volt, '/v1/admin/tree');
    assert.equal(res.status, 200, res.text);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    return flatten(res.body);
  };

  const required = ['StatusMonitor', 'ShapeLogCollector', 'ShapeCache', 'ConnectionManager', 'ReplicationClient'];
  const nodes = await waitFor(
    async () => {
      const all = await tree();
      const kinds = new Set(all.map((n) => n.kind));
      return required.every((k) => kinds.has(k)) && all;
    },
    { label: `admin tree to contain ${required.join(', ')}` },
  );
  const ids = nodes.map((n) => n.id);
  assert.equal(new Set(ids).size, ids.length, 'node ids are unique');

  const created = await request(volt, shapePath({ table: 'items', offset: '-1' }));
  assert.equal(created.status, 200, created.text);
  const handle = created.headers.get('electric-handle');
  assert.ok(handle);

  const consumer = await waitFor(
    async () => (await tree()).find((n) => n.kind === 'Consumer' && n.name.includes(handle)),
    { label: `a Consumer node for shape ${handle}` },
  );
  assert.equal(typeof consumer.status, 'string');
});

voltTest('api secret guards shapes and the admin tree but not health or preflight', { setup: ITEMS, secret: SECRET }, async ({ volt, cleanup }) => {
  const shape = (extra) => shapePath({ table: 'items', offset: '-1', ...extra });

  const unauthorized = async (pathAndQuery, what) => {
    const res = await request(volt, pathAndQuery);
    assert.equal(res.status, 401, `${what}: ${res.status} ${res.text}`);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/, what);
    assert.equal(typeof res.body?.message, 'string', `${what}: ${res.text}`);
  };
  await unauthorized(shape(), 'shape without secret');
  await unauthorized(shape({ secret: 'wrong' }), 'shape with a wrong secret');
  await unauthorized(shape({ api_secret: 'wrong' }), 'shape with a wrong api_secret');
  await unauthorized('/v1/admin/tree', 'admin tree without secret');
  await unauthorized(`/v1/admin/tree?secret=wrong`, 'admin tree with a wrong secret');

  for (const extra of [{ secret: SECRET }, { api_secret: SECRET }]) {
    const res = await request(volt, shape(extra));
    assert.equal(res.status, 200, `${JSON.stringify(extra)}: ${res.text}`);
    assert.ok(res.headers.get('electric-handle'));
  }
  const tree = await request(volt, `/v1/admin/tree?secret=${SECRET}`);
  assert.equal(tree.status, 200, tree.text);
  assert.equal(typeof tree.body?.kind, 'string');

  const preflight = await request(volt, '/v1/shape?table=items&offset=-1', {
    method: 'OPTIONS',
    headers: { origin: 'http://example.test', 'access-control-request-method': 'GET' },
  });
  assert.equal(preflight.status, 204, preflight.text);

  const health = await request(volt, '/v1/health');
  assert.equal(health.status, 200, health.text);
  assert.deepEqual(health.body, { status: 'active' });

  // The client passes the secret as a query param.
  const s = openShape(volt, { table: 'items', secret: SECRET }, { cleanup });
  assert.deepEqual(byId(await s.initialRows()), [{ id: 1, title: 'one', qty: 1, done: true }]);
});
