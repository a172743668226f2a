// Snapshot + live replication as seen through the real ShapeStream / Shape.

import assert from 'node:assert/strict';

import { byId, canon, keyOf, openShape, trace } from '../support/shape.js';
import { voltTest } from '../support/volt.js';

const ITEMS = `
  CREATE TABLE items (id int PRIMARY KEY, title text, qty int, done bool);
`;

const rowOf = (rows, id) => rows.find((r) => r.id === id);

voltTest(
  'initial snapshot then live inserts, updates and deletes reach ShapeStream in commit order',
  { setup: ITEMS },
  async ({ db, volt, cleanup }) => {
    await db.client.query(`INSERT INTO items VALUES (1, 'one', 1, false), (2, 'two', 2, true), (3, 'three', 3, false)`);

    const s = openShape(volt, { table: 'items' }, { cleanup });
    const initial = await s.initialRows();
    // Values as the client parses them from electric-schema: int4 -> number,
    // bool -> boolean, text -> string.
    assert.deepEqual(byId(initial), [
      { id: 1, title: 'one', qty: 1, done: false },
      { id: 2, title: 'two', qty: 2, done: true },
      { id: 3, title: 'three', qty: 3, done: false },
    ]);
    assert.equal(s.liveChanges().length, 0, 'snapshot rows carry no lsn');
    for (const m of s.changes()) {
      assert.equal(m.headers.operation, 'insert');
      assert.equal(m.key, keyOf('items', m.value.id));
    }

    // One statement (= one transaction) at a time, each observed before the next.
    await db.client.query(`INSERT INTO items VALUES (4, 'four', 4, true)`);
    await s.waitRows((rows) => rowOf(rows, 4)?.title === 'four', 'insert of id 4');
    assert.deepEqual(rowOf(s.shape.currentRows, 4), { id: 4, title: 'four', qty: 4, done: true });

    await db.client.query(`UPDATE items SET title = 'TWO', qty = 22 WHERE id = 2`);
    await s.waitRows((rows) => rowOf(rows, 2)?.title === 'TWO', 'update of id 2');
    assert.deepEqual(rowOf(s.shape.currentRows, 2), { id: 2, title: 'TWO', qty: 22, done: true });

    await db.client.query(`DELETE FROM items WHERE id = 3`);
    await s.waitRows((rows) => !rowOf(rows, 3), 'delete of id 3');

    // A burst of transactions without waiting in between: they must still
    // arrive in commit order.
    await db.client.query(`UPDATE items SET qty = 10 WHERE id = 1`);
    await db.client.query(`UPDATE items SET qty = 11, done = true WHERE id = 1`);
    await db.client.query(`DELETE FROM items WHERE id = 4`);
    await db.client.query(`INSERT INTO items VALUES (5, 'five', 5, false)`);
    await db.client.query(`UPDATE items SET title = 'five!' WHERE id = 5`);
    await s.waitRows((rows) => rowOf(rows, 5)?.title === 'five!', 'end of the burst');

    assert.deepEqual(byId(s.shape.currentRows), [
      { id: 1, title: 'one', qty: 11, done: true },
      { id: 2, title: 'TWO', qty: 22, done: true },
      { id: 5, title: 'five!', qty: 5, done: false },
    ]);

    const live = s.liveChanges();
    assert.deepEqual(trace(live), [
      `insert:${keyOf('items', 4)}`,
      `update:${keyOf('items', 2)}`,
      `delete:${keyOf('items', 3)}`,
      `update:${keyOf('items', 1)}`,
      `update:${keyOf('items', 1)}`,
      `delete:${keyOf('items', 4)}`,
      `insert:${keyOf('items', 5)}`,
      `update:${keyOf('items', 5)}`,
    ]);

    // Every one of these transactions has a single change: it is the last of
    // its transaction, and commit LSNs strictly increase.
    let prevLsn = -1n;
    const txids = new Set();
    for (const m of live) {
      assert.match(m.headers.lsn, /^\d+$/, 'lsn is a decimal string');
      const lsn = BigInt(m.headers.lsn);
      assert.ok(lsn > prevLsn, `lsn ${lsn} after ${prevLsn}`);
      prevLsn = lsn;
      assert.equal(m.headers.last, true);
      assert.equal(typeof m.headers.op_position, 'number');
      assert.ok(Array.isArray(m.headers.txids) && m.headers.txids.length === 1, 'one txid per change');
      assert.equal(typeof m.headers.txids[0], 'number');
      txids.add(m.headers.txids[0]);
      assert.deepEqual(m.headers.relation, ['public', 'items']);
    }
    assert.equal(txids.size, live.length, 'each statement was its own transaction');

    // replica=default: an update carries the PK and the changed columns only,
    // a delete the PK only.
    const update2 = live[1];
    assert.deepEqual(update2.value, { id: 2, title: 'TWO', qty: 22 });
    const delete3 = live[2];
    assert.deepEqual(delete3.value, { id: 3 });
  },
);

voltTest(
  'multi-row transaction arrives whole and in order',
  { setup: ITEMS },
  async ({ db, volt, cleanup }) => {
    await db.client.query(`INSERT INTO items VALUES (100, 'seed', 0, false)`);

    const s = openShape(volt, { table: 'items' }, { cleanup });
    const rowStates = [];
    s.shape.subscribe(({ rows }) => rowStates.push(canon(rows)));
    assert.deepEqual(byId(await s.initialRows()), [{ id: 100, title: 'seed', qty: 0, done: false }]);

    // Two overlapping transactions: B starts after A but commits first, so B
    // must be delivered entirely before A.
    const other = await db.connect();
    const a = db.client;
    await a.query('BEGIN');
    for (let id = 1; id <= 5; id++) {
      await a.query(`INSERT INTO items VALUES ($1, $2, $3, false)`, [id, `item ${id}`, id * 10]);
    }
    await other.query('BEGIN');
    await other.query(`INSERT INTO items VALUES (200, 'from b', 2, true)`);
    await other.query(`UPDATE items SET title = 'seed (b)' WHERE id = 100`);
    await a.query(`UPDATE items SET title = 'item 3 (updated)', done = true WHERE id = 3`);
    await a.query(`DELETE FROM items WHERE id = 4`);
    await other.query('COMMIT');
    await a.query('COMMIT');

    const final = [
      { id: 1, title: 'item 1', qty: 10, done: false },
      { id: 2, title: 'item 2', qty: 20, done: false },
      { id: 3, title: 'item 3 (updated)', qty: 30, done: true },
      { id: 5, title: 'item 5', qty: 50, done: false },
      { id: 100, title: 'seed (b)', qty: 0, done: false },
      { id: 200, title: 'from b', qty: 2, done: true },
    ];
    await s.waitRows(
      (rows) => rowOf(rows, 1) && !rowOf(rows, 4) && rowOf(rows, 200),
      'transactions A and B',
    );
    await s.waitMessages(
      (msgs) => msgs.at(-1)?.headers?.control === 'up-to-date',
      'up-to-date after transaction A',
    );
    assert.deepEqual(byId(s.shape.currentRows), final);

    const live = s.liveChanges();
    assert.deepEqual(trace(live), [
      `insert:${keyOf('items', 200)}`,
      `update:${keyOf('items', 100)}`,
      `insert:${keyOf('items', 1)}`,
      `insert:${keyOf('items', 2)}`,
      `insert:${keyOf('items', 3)}`,
      `insert:${keyOf('items', 4)}`,
      `insert:${keyOf('items', 5)}`,
      `update:${keyOf('items', 3)}`,
      `delete:${keyOf('items', 4)}`,
    ]);

    // Within a transaction: one lsn, one txid, op_position increasing, and
    // `last` only on the final change.
    const txB = live.slice(0, 2);
    const txA = live.slice(2);
    for (const tx of [txB, txA]) {
      const { lsn, txids } = tx[0].headers;
      for (const [i, m] of tx.entries()) {
        assert.equal(m.headers.lsn, lsn, 'same commit lsn across the transaction');
        assert.deepEqual(m.headers.txids, txids, 'same txid across the transaction');
        if (i > 0) assert.ok(m.headers.op_position > tx[i - 1].headers.op_position, 'op_position increases');
        if (i === tx.length - 1) assert.equal(m.headers.last, true, 'last change is marked last');
        else assert.equal(m.headers.last, undefined, 'only the last change is marked last');
      }
    }
    assert.ok(BigInt(txB[0].headers.lsn) < BigInt(txA[0].headers.lsn), 'B committed first');
    assert.notDeepEqual(txB[0].headers.txids, txA[0].headers.txids);

    // At every up-to-date boundary the shape is in a committed state: before
    // either transaction, after B only, or after both.
    const initialState = [{ id: 100, title: 'seed', qty: 0, done: false }];
    const afterB = byId([
      { id: 100, title: 'seed (b)', qty: 0, done: false },
      { id: 200, title: 'from b', qty: 2, done: true },
    ]);
    const committed = [initialState, afterB, final].map(canon);
    for (const state of s.upToDateStates) {
      const rows = canon([...state.values()]);
      assert.ok(committed.includes(rows), `partial transaction visible at up-to-date: ${rows}`);
    }
    for (const rows of rowStates) {
      assert.ok(committed.includes(rows), `Shape notified a partial transaction: ${rows}`);
    }
    assert.ok(rowStates.length >= 1, 'Shape notified its subscriber');
  },
);

voltTest(
  'live changes reach ShapeStream over server-sent events (liveSse)',
  { setup: ITEMS },
  async ({ db, volt, cleanup }) => {
    await db.client.query(`INSERT INTO items VALUES (1, 'one', 1, false)`);
    const s = openShape(volt, { table: 'items' }, { cleanup, liveSse: true });
    assert.deepEqual(byId(await s.initialRows()), [{ id: 1, title: 'one', qty: 1, done: false }]);

    await db.client.query(`INSERT INTO items VALUES (2, 'two', 2, true)`);
    await s.waitRows((rows) => rowOf(rows, 2)?.title === 'two', 'insert over SSE');
    await db.client.query(`UPDATE items SET title = 'ONE' WHERE id = 1`);
    await s.waitRows((rows) => rowOf(rows, 1)?.title === 'ONE', 'update over SSE');
    await db.client.query(`DELETE FROM items WHERE id = 2`);
    await s.waitRows((rows) => !rowOf(rows, 2), 'delete over SSE');
    assert.deepEqual(byId(s.shape.currentRows), [{ id: 1, title: 'ONE', qty: 1, done: false }]);
  },
);
