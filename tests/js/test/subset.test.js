// Subset snapshots (`requestSnapshot` / `fetchSnapshot`) through the real client, over GET
// and POST, and their error answers over raw HTTP.

import assert from 'node:assert/strict';

import { byId, openShape, request, shapePath } from '../support/shape.js';
import { voltTest } from '../support/volt.js';

const ITEMS = `
  CREATE TABLE items (id int PRIMARY KEY, title text, qty int);
  INSERT INTO items SELECT n, 'item ' || n, n FROM generate_series(1, 20) AS n;
`;

function assertMetadata(metadata, data) {
  assert.match(metadata.xmin, /^\d+$/, 'xmin is a decimal string');
  assert.match(metadata.xmax, /^\d+$/, 'xmax is a decimal string');
  assert.ok(Array.isArray(metadata.xip_list));
  assert.match(metadata.database_lsn, /^\d+$/, 'database_lsn is a decimal string');
  assert.equal(typeof metadata.snapshot_mark, 'number');
  for (const m of data) {
    assert.equal(m.headers.operation, 'insert');
    assert.equal(m.headers.snapshot_mark, metadata.snapshot_mark);
  }
}

voltTest(
  'fetchSnapshot returns the ordered, limited subset of the shape over GET and POST',
  { setup: ITEMS },
  async ({ volt, cleanup }) => {
    const s = openShape(volt, { table: 'items', where: 'qty > 2' }, { cleanup });
    await s.initialRows();

    for (const method of ['GET', 'POST']) {
      const { metadata, data } = await s.stream.fetchSnapshot({
        where: 'qty < $1',
        params: { 1: '10' },
        orderBy: 'id DESC',
        limit: 3,
        offset: 1,
        method,
      });
      assertMetadata(metadata, data);
      // The shape's where (qty > 2) and the subset's (qty < 10), ordered and paged.
      assert.deepEqual(
        data.map((m) => m.value),
        [
          { id: 8, title: 'item 8', qty: 8 },
          { id: 7, title: 'item 7', qty: 7 },
          { id: 6, title: 'item 6', qty: 6 },
        ],
        method,
      );
    }
  },
);

voltTest(
  'requestSnapshot in changes_only mode joins the subset to the live stream',
  { setup: ITEMS },
  async ({ db, volt, cleanup }) => {
    const s = openShape(volt, { table: 'items' }, { cleanup, log: 'changes_only' });
    await s.initialRows();
    assert.equal(s.shape.currentRows.length, 0, 'changes_only starts empty');

    const { data } = await s.stream.requestSnapshot({ where: 'id <= 3', orderBy: 'id' });
    assert.deepEqual(
      data.map((m) => m.value.id),
      [1, 2, 3],
    );
    await s.waitRows((rows) => rows.length === 3, 'subset rows in the shape');

    // Changes after the subset arrive on the stream, for subset rows and others.
    await db.client.query(`UPDATE items SET title = 'two!' WHERE id = 2`);
    await db.client.query(`INSERT INTO items VALUES (100, 'new', 100)`);
    await s.waitRows(
      (rows) => rows.some((r) => r.id === 100) && rows.find((r) => r.id === 2)?.title === 'two!',
      'live changes after the subset',
    );
    assert.deepEqual(byId(s.shape.currentRows).map((r) => r.id), [1, 2, 3, 100]);
    assert.deepEqual(s.errors, []);
  },
);

voltTest(
  'subset responses carry electric-snapshot and no-cache, and bad subsets are 400s under errors.subset',
  { setup: ITEMS },
  async ({ volt }) => {
    const ok = await request(
      volt,
      shapePath({ table: 'items', offset: '-1', subset__where: 'id = 1', subset__order_by: 'id' }),
    );
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.headers.get('electric-snapshot'), 'true');
    assert.equal(ok.headers.get('cache-control'), 'no-cache');
    assert.equal(ok.headers.get('etag'), null);
    assert.ok(ok.headers.get('electric-handle'));
    assert.ok(ok.headers.get('electric-offset'));
    assert.ok(ok.headers.get('electric-schema'));
    assert.deepEqual(ok.body.data.map((m) => m.key), ['"public"."items"/"1"']);

    const cases = [
      [{ subset__limit: '2' }, 'order_by', 'order_by is required when limit or offset is present'],
      [{ subset__limit: '0', subset__order_by: 'id' }, 'limit', 'must be greater than 0'],
      [{ subset__order_by: 'nope' }, 'order_by', /^At location 0: unknown reference nope/],
      [{ subset__where: 'nope = 1' }, 'where', /^At location 0: /],
      [{ subset__where: 'id = $1', subset__params: '{"2":"1"}' }, 'params', /sequentially/],
    ];
    for (const [query, field, message] of cases) {
      const res = await request(volt, shapePath({ table: 'items', offset: '-1', ...query }));
      assert.equal(res.status, 400, `${JSON.stringify(query)}: ${res.text}`);
      assert.equal(res.body.message, 'Invalid request');
      const [got] = res.body.errors.subset[field];
      if (message instanceof RegExp) assert.match(got, message);
      else assert.equal(got, message);
    }

    // A POST body must be a JSON object.
    const bad = await fetch(`${volt.url}${shapePath({ table: 'items', offset: '-1' })}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '[1,2]',
    });
    assert.equal(bad.status, 400);

    // A POST without subset keys is a shape request whose body adds parameters (`where`
    // at the top level would be the subset's): never cached.
    const post = await fetch(`${volt.url}/v1/shape?offset=-1&where=id%20%3C%3D%202`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ table: 'items', columns: 'id,qty' }),
    });
    assert.equal(post.status, 200);
    assert.equal(post.headers.get('cache-control'), 'no-cache');
    const rows = (await post.json()).filter((m) => m.headers.operation === 'insert');
    assert.deepEqual(rows.map((m) => m.value).sort((a, b) => a.id - b.id), [
      { id: '1', qty: '1' },
      { id: '2', qty: '2' },
    ]);
  },
);

voltTest(
  'requestSnapshot taken while rows are being written loses no change to the subset rows',
  { setup: ITEMS },
  async ({ db, volt, cleanup }) => {
    const s = openShape(volt, { table: 'items' }, { cleanup, log: 'changes_only' });
    await s.initialRows();

    // Writes keep landing before, during and after the subset query.
    let writing = true;
    const writer = (async () => {
      let n = 0;
      while (writing) {
        n += 1;
        await db.client.query(`UPDATE items SET qty = qty + 1 WHERE id = ${1 + (n % 10)}`);
      }
    })();
    try {
      await s.stream.requestSnapshot({ where: 'id <= 10', orderBy: 'id' });
    } finally {
      writing = false;
      await writer;
    }
    await db.client.query(`INSERT INTO items VALUES (999, 'marker', 0)`);
    await s.waitRows((rows) => rows.some((r) => r.id === 999), 'marker row');

    const { rows: truth } = await db.client.query('SELECT id, title, qty FROM items WHERE id <= 10 ORDER BY id');
    const seen = byId(s.shape.currentRows).filter((r) => r.id <= 10);
    assert.deepEqual(seen, truth);
  },
);

const TICKETS = `
  CREATE TYPE ticket_status AS ENUM ('open', 'closed', 'archived');
  CREATE TABLE tickets (id int PRIMARY KEY, status ticket_status, title text);
  INSERT INTO tickets VALUES
    (1, 'open', 'one'), (2, 'closed', 'two'), (3, 'archived', 'three'),
    (4, 'open', 'four'), (5, NULL, 'five');
`;

voltTest(
  'enum columns compare with string literals in shape and subset where clauses',
  { setup: TICKETS },
  async ({ db, volt, cleanup }) => {
    const s = openShape(volt, { table: 'tickets', where: `status <> 'archived'` }, { cleanup });
    await s.initialRows();
    assert.deepEqual(byId(s.shape.currentRows).map((r) => r.id), [1, 2, 4]);

    for (const method of ['GET', 'POST']) {
      const { data } = await s.stream.fetchSnapshot({
        where: 'status IN ($1, $2) OR status IS NULL',
        params: { 1: 'open', 2: 'archived' },
        orderBy: 'id',
        method,
      });
      // The shape's where leaves 'archived' out, and NULL is not <> 'archived'.
      assert.deepEqual(
        data.map((m) => m.value),
        [
          { id: 1, status: 'open', title: 'one' },
          { id: 4, status: 'open', title: 'four' },
        ],
        method,
      );
    }

    // The live stream evaluates the same clause: a row moves out and another in.
    await db.client.query(`UPDATE tickets SET status = 'archived' WHERE id = 1`);
    await db.client.query(`UPDATE tickets SET status = 'open' WHERE id = 3`);
    await s.waitRows(
      (rows) => JSON.stringify(byId(rows).map((r) => r.id)) === '[2,3,4]',
      'rows moved by status changes',
    );

    // A label added after the shape was made works in a subset (Postgres judges labels
    // there, as in Electric), and the live stream matches it as text.
    await db.client.query(`ALTER TYPE ticket_status ADD VALUE 'new'`);
    await db.client.query(`INSERT INTO tickets VALUES (6, 'new', 'six')`);
    await s.waitRows((rows) => rows.some((r) => r.id === 6), 'row with the new label');
    const { data: fresh } = await s.stream.fetchSnapshot({ where: `status = 'new'`, orderBy: 'id' });
    assert.deepEqual(fresh.map((m) => m.value.id), [6]);

    // A label the type does not have is a 400: from Postgres for a subset, and naming its
    // location for a shape's where clause, never a failed snapshot.
    const bad = await request(
      volt,
      shapePath({ table: 'tickets', offset: '-1', subset__where: `status = 'gone'` }),
    );
    assert.equal(bad.status, 400, bad.text);
    assert.match(bad.body.errors.subset.where[0], /invalid input value for enum ticket_status: "gone"/);
    const badShape = await request(
      volt,
      shapePath({ table: 'tickets', offset: '-1', where: `status = 'gone'` }),
    );
    assert.equal(badShape.status, 400, badShape.text);
    assert.equal(
      badShape.body.errors.where[0],
      'At location 9: invalid input value for enum ticket_status: "gone"',
    );
    const ordered = await request(
      volt,
      shapePath({ table: 'tickets', offset: '-1', where: `status < 'closed'` }),
    );
    assert.equal(ordered.status, 400, ordered.text);
    assert.deepEqual(s.errors, []);
  },
);
