// The wire format, checked with plain fetch rather than the client.

import assert from 'node:assert/strict';

import { keyOf, request, shapePath } from '../support/shape.js';
import { LONG_POLL_TIMEOUT_MS, voltTest } from '../support/volt.js';

const ITEMS = `
  CREATE TABLE items (id int PRIMARY KEY, title text, qty int, done bool);
  INSERT INTO items VALUES (1, 'one', 1, true), (2, 'two', NULL, false), (3, 'a/b', 3, NULL);
`;

const DECIMAL = /^\d+$/;

function assertJsonContentType(res) {
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/, 'content-type is JSON');
}

function assertUpToDate(msg) {
  assert.equal(msg?.headers?.control, 'up-to-date', `expected up-to-date, got ${JSON.stringify(msg)}`);
  assert.match(msg.headers.global_last_seen_lsn, DECIMAL, 'global_last_seen_lsn is a decimal string');
}

voltTest(
  'raw HTTP snapshot, catch-up, long-poll timeout and live insert follow the wire format',
  { setup: ITEMS },
  async ({ db, volt }) => {
    // --- offset=-1: snapshot chunk 0.
    const first = await request(volt, shapePath({ table: 'items', offset: '-1' }));
    assert.equal(first.status, 200, first.text);
    assertJsonContentType(first);
    const handle = first.headers.get('electric-handle');
    assert.ok(handle, 'electric-handle header');
    assert.equal(first.headers.get('electric-offset'), '0_0');
    assert.equal(first.headers.get('electric-up-to-date'), null, 'snapshot is never up-to-date');
    assert.deepEqual(JSON.parse(first.headers.get('electric-schema')), {
      id: { type: 'int4', pk_index: 0, not_null: true },
      title: { type: 'text' },
      qty: { type: 'int4' },
      done: { type: 'bool' },
    });

    assert.ok(Array.isArray(first.body), 'body is a JSON array');
    const end = first.body.at(-1);
    assert.equal(end.headers.control, 'snapshot-end');
    assert.match(end.headers.xmin, DECIMAL);
    assert.match(end.headers.xmax, DECIMAL);
    assert.ok(Array.isArray(end.headers.xip_list));
    for (const xip of end.headers.xip_list) assert.match(xip, DECIMAL);
    assert.ok(!first.body.some((m) => m.headers?.control === 'up-to-date'));

    const rows = first.body.slice(0, -1).sort((a, b) => Number(a.value.id) - Number(b.value.id));
    assert.deepEqual(rows, [
      {
        key: '"public"."items"/"1"',
        value: { id: '1', title: 'one', qty: '1', done: 't' },
        headers: { operation: 'insert', relation: ['public', 'items'] },
      },
      {
        key: '"public"."items"/"2"',
        value: { id: '2', title: 'two', qty: null, done: 'f' },
        headers: { operation: 'insert', relation: ['public', 'items'] },
      },
      {
        key: '"public"."items"/"3"',
        value: { id: '3', title: 'a/b', qty: '3', done: null },
        headers: { operation: 'insert', relation: ['public', 'items'] },
      },
    ]);

    // Same definition, same handle.
    const again = await request(volt, shapePath({ table: 'items', offset: '-1' }));
    assert.equal(again.headers.get('electric-handle'), handle);

    // --- offset=0_0: end of the snapshot, nothing replicated yet -> up-to-date.
    const catchUp = await request(volt, shapePath({ table: 'items', offset: '0_0', handle }));
    assert.equal(catchUp.status, 200, catchUp.text);
    assert.equal(catchUp.headers.get('electric-handle'), handle);
    assert.equal(catchUp.headers.get('electric-up-to-date'), '');
    assert.ok(catchUp.headers.get('electric-schema'), 'non-live responses carry the schema');
    const tip = catchUp.headers.get('electric-offset');
    assert.equal(tip, '0_inf', 'nothing replicated for this shape yet');
    assert.ok(Array.isArray(catchUp.body));
    assert.equal(catchUp.body.length, 1, JSON.stringify(catchUp.body));
    assertUpToDate(catchUp.body.at(-1));

    // --- live at the tip, nothing happens: held for the long-poll timeout.
    const started = Date.now();
    const idle = await request(volt, shapePath({ table: 'items', offset: tip, handle, live: 'true' }));
    const held = Date.now() - started;
    assert.equal(idle.status, 200, idle.text);
    assert.ok(held >= LONG_POLL_TIMEOUT_MS - 500, `held ${held} ms, expected about ${LONG_POLL_TIMEOUT_MS}`);
    assert.ok(held < LONG_POLL_TIMEOUT_MS + 5000, `held ${held} ms, expected about ${LONG_POLL_TIMEOUT_MS}`);
    assert.equal(idle.body.length, 1, JSON.stringify(idle.body));
    assertUpToDate(idle.body[0]);
    assert.equal(idle.headers.get('electric-has-data'), 'false');
    assert.equal(idle.headers.get('electric-up-to-date'), '');
    assert.equal(idle.headers.get('electric-offset'), tip, 'offset unchanged on timeout');
    assert.equal(idle.headers.get('electric-handle'), handle);
    assert.equal(idle.headers.get('electric-schema'), null, 'live responses carry no schema');
    const cursor = idle.headers.get('electric-cursor');
    assert.match(cursor ?? '', DECIMAL, 'electric-cursor is a decimal string');

    // --- live request answered by an INSERT. Whether the insert lands before
    // or while the request is held, the response must carry it.
    const pending = request(volt, shapePath({ table: 'items', offset: tip, handle, live: 'true', cursor }));
    await db.client.query('BEGIN');
    await db.client.query(`INSERT INTO items VALUES (4, 'four', 4, false)`);
    const {
      rows: [{ xid }],
    } = await db.client.query('SELECT pg_current_xact_id()::text AS xid');
    await db.client.query('COMMIT');
    const change = await pending;
    assert.equal(change.status, 200, change.text);
    assert.notEqual(change.headers.get('electric-has-data'), 'false');
    assert.equal(change.headers.get('electric-up-to-date'), '');
    assert.match(change.headers.get('electric-cursor') ?? '', DECIMAL);
    assert.equal(change.headers.get('electric-handle'), handle);

    assert.equal(change.body.length, 2, JSON.stringify(change.body));
    const [insert, upToDate] = change.body;
    assertUpToDate(upToDate);
    assert.equal(insert.key, keyOf('items', 4));
    assert.deepEqual(insert.value, { id: '4', title: 'four', qty: '4', done: 'f' });
    const h = insert.headers;
    assert.equal(h.operation, 'insert');
    assert.deepEqual(h.relation, ['public', 'items']);
    assert.ok(Array.isArray(h.txids) && h.txids.length === 1, `txids: ${JSON.stringify(h.txids)}`);
    assert.equal(typeof h.txids[0], 'number');
    assert.equal(BigInt(h.txids[0]), BigInt(xid) % 2n ** 32n, 'txid is the inserting transaction');
    assert.match(h.lsn, DECIMAL, 'lsn is a decimal string');
    assert.equal(typeof h.op_position, 'number');
    assert.equal(h.last, true);
    assert.equal(change.headers.get('electric-offset'), `${h.lsn}_${h.op_position}`, 'offset of the last change');
    assert.ok(BigInt(upToDate.headers.global_last_seen_lsn) >= BigInt(h.lsn));

    // --- catching up from the old tip without live returns the same change.
    const replay = await request(volt, shapePath({ table: 'items', offset: tip, handle }));
    assert.equal(replay.status, 200, replay.text);
    assert.deepEqual(replay.body[0], insert);
    assert.equal(replay.headers.get('electric-offset'), change.headers.get('electric-offset'));
  },
);

async function assertBadRequest(volt, query, param, check) {
  const res = await request(volt, shapePath(query));
  const what = `${JSON.stringify(query)} -> ${res.status} ${res.text}`;
  assert.ok(res.status < 500, `never a 5xx: ${what}`);
  assert.equal(res.status, 400, what);
  assertJsonContentType(res);
  assert.equal(typeof res.body?.message, 'string', `message in ${what}`);
  const errors = res.body?.errors?.[param];
  assert.ok(Array.isArray(errors) && errors.length > 0 && typeof errors[0] === 'string', `errors.${param} in ${what}`);
  check?.(errors[0], what);
  return res;
}

const atLocation = (msg, what) => assert.match(msg, /^At location \d+/, what);

voltTest('bad where clause is a 400 with a JSON message', { setup: ITEMS }, async ({ volt }) => {
  for (const where of [
    'title = ',
    "title = 'x' AND",
    'qty >>> 1',
    'nope = 1',
    "title = 'x' OR missing_column IS NULL",
    'id',
    'title',
    'qty + 1',
  ]) {
    await assertBadRequest(volt, { table: 'items', offset: '-1', where }, 'where', atLocation);
  }
  // A valid where on the same table still works afterwards.
  const ok = await request(volt, shapePath({ table: 'items', offset: '-1', where: 'qty > 1' }));
  assert.equal(ok.status, 200, ok.text);
});

voltTest('unknown table is a 400', { setup: ITEMS }, async ({ volt }) => {
  await assertBadRequest(volt, { table: 'nope', offset: '-1' }, 'table', (msg, what) =>
    assert.match(msg, /does not exist/, what),
  );
  await assertBadRequest(volt, { table: 'other_schema.items', offset: '-1' }, 'table');
  await assertBadRequest(volt, { offset: '-1' }, 'table');
});

voltTest('missing or malformed offset is a 400', { setup: ITEMS }, async ({ volt }) => {
  await assertBadRequest(volt, { table: 'items' }, 'offset', (msg, what) => assert.equal(msg, "can't be blank", what));
  await assertBadRequest(volt, { table: 'items', offset: 'abc' }, 'offset');
  await assertBadRequest(volt, { table: 'items', offset: '5_0' }, 'handle');
  await assertBadRequest(volt, { table: 'items', offset: '-1', live: 'true' }, 'live');
});
