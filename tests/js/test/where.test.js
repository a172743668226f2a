// Shape definitions: where clauses and column selection.

import assert from 'node:assert/strict';

import { byId, canon, keyOf, openShape, request, shapePath, trace } from '../support/shape.js';
import { voltTest } from '../support/volt.js';

const ITEMS = `
  CREATE TABLE items (id int PRIMARY KEY, title text, qty int, done bool);
`;

const ids = (rows) => byId(rows).map((r) => r.id);
const rowOf = (rows, id) => rows.find((r) => r.id === id);

voltTest(
  'where clause filters snapshot and live changes, rows move in and out',
  { setup: ITEMS },
  async ({ db, volt, cleanup }) => {
    await db.client.query(`
      INSERT INTO items VALUES (1, 'a', 5, false), (2, 'b', 15, false), (3, 'c', 20, true), (4, 'd', 1, false)
    `);

    const s = openShape(volt, { table: 'items', where: 'qty > 10' }, { cleanup });
    assert.deepEqual(byId(await s.initialRows()), [
      { id: 2, title: 'b', qty: 15, done: false },
      { id: 3, title: 'c', qty: 20, done: true },
    ]);

    // Raising qty above 10 moves the row in: the client sees an insert of the full row.
    await db.client.query(`UPDATE items SET qty = 11 WHERE id = 1`);
    await s.waitRows((rows) => rowOf(rows, 1), 'id 1 to move in');
    assert.deepEqual(rowOf(s.shape.currentRows, 1), { id: 1, title: 'a', qty: 11, done: false });

    // Lowering it moves the row out: a delete.
    await db.client.query(`UPDATE items SET qty = 2 WHERE id = 3`);
    await s.waitRows((rows) => !rowOf(rows, 3), 'id 3 to move out');

    // Staying inside is an ordinary update.
    await db.client.query(`UPDATE items SET qty = 16 WHERE id = 2`);
    await s.waitRows((rows) => rowOf(rows, 2)?.qty === 16, 'id 2 to be updated');

    // Changes entirely outside the shape never appear; a matching sentinel
    // written afterwards proves they were processed.
    await db.client.query(`INSERT INTO items VALUES (5, 'e', 3, false)`);
    await db.client.query(`UPDATE items SET title = 'dd' WHERE id = 4`);
    await db.client.query(`UPDATE items SET qty = 4 WHERE id = 5`);
    await db.client.query(`DELETE FROM items WHERE id = 5`);
    await db.client.query(`INSERT INTO items VALUES (6, 'f', 50, true)`);
    await s.waitRows((rows) => rowOf(rows, 6), 'sentinel id 6');

    assert.deepEqual(byId(s.shape.currentRows), [
      { id: 1, title: 'a', qty: 11, done: false },
      { id: 2, title: 'b', qty: 16, done: false },
      { id: 6, title: 'f', qty: 50, done: true },
    ]);
    const live = s.liveChanges();
    assert.deepEqual(trace(live), [
      `insert:${keyOf('items', 1)}`,
      `delete:${keyOf('items', 3)}`,
      `update:${keyOf('items', 2)}`,
      `insert:${keyOf('items', 6)}`,
    ]);
    assert.deepEqual(live[0].value, { id: 1, title: 'a', qty: 11, done: false }, 'move-in carries the full row');
    for (const key of [keyOf('items', 4), keyOf('items', 5)]) {
      assert.ok(!s.changes().some((m) => m.key === key), `${key} never entered the shape`);
    }
  },
);

voltTest('columns parameter selects columns', { setup: ITEMS }, async ({ db, volt, cleanup }) => {
  await db.client.query(`INSERT INTO items VALUES (1, 'one', 1, false), (2, 'two', 2, true)`);

  // The client serialises the array as quoted identifiers: columns="id","title".
  const s = openShape(volt, { table: 'items', columns: ['id', 'title'] }, { cleanup });
  assert.deepEqual(byId(await s.initialRows()), [
    { id: 1, title: 'one' },
    { id: 2, title: 'two' },
  ]);

  await db.client.query(`INSERT INTO items VALUES (3, 'three', 3, true)`);
  // An update touching no selected column produces no message.
  await db.client.query(`UPDATE items SET qty = 100, done = true WHERE id = 1`);
  await db.client.query(`UPDATE items SET title = 'TWO', qty = 200 WHERE id = 2`);
  await s.waitRows((rows) => rowOf(rows, 2)?.title === 'TWO', 'title update of id 2');

  assert.deepEqual(byId(s.shape.currentRows), [
    { id: 1, title: 'one' },
    { id: 2, title: 'TWO' },
    { id: 3, title: 'three' },
  ]);
  for (const m of s.changes()) {
    for (const k of Object.keys(m.value)) assert.ok(['id', 'title'].includes(k), `unexpected column ${k} in ${JSON.stringify(m)}`);
  }
  assert.deepEqual(trace(s.liveChanges()), [`insert:${keyOf('items', 3)}`, `update:${keyOf('items', 2)}`]);

  // Plain (unquoted) list on the wire: the schema header lists exactly those columns.
  const res = await request(volt, shapePath({ table: 'items', offset: '-1', columns: 'id,title' }));
  assert.equal(res.status, 200);
  assert.deepEqual(Object.keys(JSON.parse(res.headers.get('electric-schema'))).sort(), ['id', 'title']);
  for (const m of res.body.filter((m) => m.value)) assert.deepEqual(Object.keys(m.value).sort(), ['id', 'title']);
});

const T = `
  CREATE TABLE t (id int PRIMARY KEY, name text, n int, flag bool, amount numeric(10,2));
  INSERT INTO t VALUES
    (1, 'alpha', 1, true, 1.50),
    (2, 'beta', 2, false, 10.50),
    (3, 'gamma', 3, true, NULL),
    (4, NULL, 4, false, 4.00),
    (5, 'Alpine', 5, NULL, 5.25),
    (6, 'delta', NULL, true, 100.00),
    (7, 'epsilon', 7, false, 0.99),
    (8, 'abba', 8, true, 10.49),
    (9, NULL, NULL, NULL, NULL),
    (10, 'zeta', 10, false, -3.00),
    (11, 'a_b%c', 11, true, 20.00),
    (12, 'ETA', 12, false, 5.24);
`;

const CLAUSES = [
  'flag AND n > 3',
  "(name LIKE 'a%' OR amount >= 10.5) AND NOT flag",
  'n IN (1, 3, 5, 12) OR name IS NULL',
  'amount IS NOT NULL AND amount < 5.25 AND amount > -1',
  "name NOT LIKE '%a%' AND n NOT IN (2, 4) OR flag IS NULL",
  "NOT (name ILIKE 'a%') AND amount <> 4",
  'flag = false AND NOT (n = 2 OR n IS NULL)',
  "name = 'beta' OR (amount > 5 AND NOT flag) OR id IN (9)",
];

voltTest(
  'where with AND/OR/NOT, IN, LIKE, IS NULL over text, integers, booleans, numerics',
  { setup: T },
  async ({ db, volt, cleanup }) => {
    // pg returns int4 as number, bool as boolean, numeric and text as string:
    // the same types the client gives for int4/bool/numeric/text.
    const expected = async (where) => (await db.client.query(`SELECT * FROM t WHERE ${where} ORDER BY id`)).rows;

    const shapes = [];
    for (const where of CLAUSES) {
      const s = openShape(volt, { table: 't', where }, { cleanup });
      shapes.push({ where, s });
    }
    for (const { where, s } of shapes) {
      const want = await expected(where);
      assert.ok(want.length > 0 && want.length < 12, `clause ${where} should be selective`);
      assert.deepEqual(byId(await s.initialRows()), want, `snapshot of ${where}`);
    }

    // Every clause gains and loses rows through these changes.
    await db.client.query(`UPDATE t SET flag = true, n = 6 WHERE id = 2`);
    await db.client.query(`UPDATE t SET flag = false WHERE id = 11`);
    await db.client.query(`UPDATE t SET n = 3, name = NULL WHERE id = 7`);
    await db.client.query(`UPDATE t SET amount = NULL WHERE id = 1`);
    await db.client.query(`INSERT INTO t VALUES (13, 'anna', 13, false, 11.00), (14, NULL, 1, NULL, 2.00)`);
    await db.client.query(`DELETE FROM t WHERE id IN (3, 10)`);
    await db.client.query(`UPDATE t SET amount = amount + 1 WHERE id = 12`);
    await db.client.query(`UPDATE t SET flag = NULL WHERE id = 6`);
    await db.client.query(`UPDATE t SET name = 'ALPS', n = 4 WHERE id = 8`);
    await db.client.query('BEGIN');
    await db.client.query(`UPDATE t SET name = 'alps' WHERE id = 4`);
    await db.client.query(`UPDATE t SET n = 20, flag = false WHERE id = 5`);
    await db.client.query(`INSERT INTO t VALUES (15, 'a', 2, true, 5.00)`);
    await db.client.query('COMMIT');

    for (const { where, s } of shapes) {
      const want = await expected(where);
      const wantText = canon(want);
      await s.waitRows((rows) => canon(rows) === wantText, `live state of ${where}`).catch((err) => {
        err.message += `\n  want ids ${JSON.stringify(ids(want))}\n  have ids ${JSON.stringify(ids(s.shape.currentRows))}`;
        throw err;
      });
      assert.deepEqual(byId(s.shape.currentRows), want, `live state of ${where}`);
    }
  },
);
