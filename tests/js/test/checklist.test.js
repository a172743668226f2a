// The compatibility checklist of shared/electric-protocol.md section 12, one test per
// item, in order. Most items go through the real @electric-sql/client; raw HTTP
// (fetch) where the client hides the detail.
//
// One volt and one database serve the whole file (each item has its own tables), with
// short timers so nothing is waited out: long-poll 2 s, SSE 1.5 s with keep-alives
// after 300 ms of silence, out-of-bounds wait 500 ms, 4 KiB chunks. Items 36 and 37
// start their own (cheap) volt instances.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { byId, keyOf, openShape, request, shapePath, trace } from '../support/shape.js';
import { Cleanup, createTestDb, freePort, guarded, startVolt, waitFor } from '../support/volt.js';

const LONG_POLL_MS = 2000;
const SSE_MS = 1500;
const KEEPALIVE_MS = 300;
const OUT_OF_BOUNDS_MS = 500;

const ENV = {
  ELECTRIC_LONG_POLL_TIMEOUT: String(LONG_POLL_MS),
  ELECTRIC_SSE_TIMEOUT: `${SSE_MS}ms`,
  ELECTRIC_SSE_KEEPALIVE_INTERVAL: `${KEEPALIVE_MS}ms`,
  ELECTRIC_OUT_OF_BOUNDS_TIMEOUT: `${OUT_OF_BOUNDS_MS}ms`,
  ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD: '4KiB',
  ELECTRIC_ENABLE_INTEGRATION_TESTING: 'true',
};

// Tables are named for the item that uses them, so items never disturb each other.
const SETUP = `
  CREATE TABLE c01 (id int PRIMARY KEY, title text);
  INSERT INTO c01 VALUES (1, 'one'), (2, 'two');

  CREATE TABLE c02 (id int PRIMARY KEY, title text, n int, big int8, flag bool, price numeric(6,2),
                    meta jsonb, tags text[], code char(4), note text);
  INSERT INTO c02 VALUES (1, 'one', 42, 9007199254740993, true, 1.50, '{"a": 1}', '{a,b}', 'ab', NULL),
                         (2, 'two', NULL, NULL, false, NULL, NULL, NULL, NULL, 'x');

  CREATE TABLE c03 (id int PRIMARY KEY);
  INSERT INTO c03 VALUES (1);

  CREATE SCHEMA s04;
  CREATE TABLE s04.kt (a text, b int, v text, PRIMARY KEY (a, b));
  INSERT INTO s04.kt VALUES ('x/y', 1, 'first'), ('plain', 2, 'second');
  CREATE TABLE s04.nopk (a text, b int);
  INSERT INTO s04.nopk VALUES (NULL, 1), ('q/r', NULL);
  CREATE TABLE s04."we.ird/name" (id int PRIMARY KEY);
  INSERT INTO s04."we.ird/name" VALUES (1);

  CREATE TABLE c05 (id int PRIMARY KEY, title text);
  INSERT INTO c05 VALUES (1, 'one'), (2, 'two');

  CREATE TABLE c06 (id int PRIMARY KEY, filler text);
  INSERT INTO c06 SELECT g, repeat('x', 100) FROM generate_series(1, 200) g;

  CREATE TABLE c07 (id int PRIMARY KEY, title text);
  INSERT INTO c07 VALUES (1, 'one');

  CREATE TABLE c08 (id int PRIMARY KEY, title text);
  INSERT INTO c08 VALUES (1, 'one');

  CREATE TABLE c10 (id int PRIMARY KEY);
  CREATE TABLE c15 (id int PRIMARY KEY, title text);
  CREATE TABLE c16 (id int PRIMARY KEY, title text, n int);

  CREATE TABLE "MyTable" (id int PRIMARY KEY, v text);
  INSERT INTO "MyTable" VALUES (1, 'upper');
  CREATE TABLE mytable (id int PRIMARY KEY, v text);
  INSERT INTO mytable VALUES (1, 'lower');
  CREATE SCHEMA s18;
  CREATE TABLE s18.t (id int PRIMARY KEY, v text);
  INSERT INTO s18.t VALUES (1, 'in s18');

  CREATE TABLE c19 (id int PRIMARY KEY, title text);
  INSERT INTO c19 VALUES (1, 'one');
  CREATE TABLE c20 (id int PRIMARY KEY, title text);
  INSERT INTO c20 VALUES (1, 'one');

  CREATE TABLE c21a (id int PRIMARY KEY, title text);
  CREATE TABLE c21b (id int PRIMARY KEY, title text);
  CREATE TABLE c21c (id int PRIMARY KEY, title text);
  INSERT INTO c21a VALUES (1, 'one');
  INSERT INTO c21b VALUES (1, 'one');
  INSERT INTO c21c VALUES (1, 'one');

  CREATE TABLE c22 (id int PRIMARY KEY, title text);
  INSERT INTO c22 VALUES (1, 'one'), (2, 'two');
  CREATE TABLE c23 (id int PRIMARY KEY);
  INSERT INTO c23 VALUES (1);

  CREATE TABLE c24 (id int PRIMARY KEY);
  CREATE TABLE c25 (id int PRIMARY KEY, title text);
  CREATE TABLE c26 (id int PRIMARY KEY, title text);
  CREATE TABLE c28 (id int PRIMARY KEY, a text, b text);
  CREATE TABLE c29 (id int PRIMARY KEY, a text, b text);
  CREATE TABLE c30 (id int PRIMARY KEY, title text, n int);
  INSERT INTO c30 VALUES (1, 'low', 1), (2, 'high', 20);
  CREATE TABLE c31 (id int PRIMARY KEY, title text);
  INSERT INTO c31 VALUES (1, 'one');

  CREATE TABLE c32 (id int PRIMARY KEY);
  INSERT INTO c32 VALUES (1);
  CREATE TABLE c33 (id int PRIMARY KEY);
  INSERT INTO c33 VALUES (1);
  CREATE TABLE c34 (id int PRIMARY KEY);
  CREATE TABLE c35 (id int PRIMARY KEY, title text);
  CREATE TABLE c38 (id int PRIMARY KEY);
`;

let db;
let volt;
const DECIMAL = /^\d+$/;

before(async () => {
  db = await createTestDb('checklist');
  await db.client.query(SETUP);
  volt = await startVolt({ databaseUrl: db.url, streamId: db.streamId, env: ENV });
});

after(async () => {
  const steps = new Cleanup();
  if (db) steps.defer(() => db.drop());
  if (volt) steps.defer(() => volt.stop());
  await steps.run();
});

/** One checklist item: `checklist NN: <what it proves>`; volt's logs are printed if it fails. */
function item(n, title, fn, { timeout = 30_000 } = {}) {
  const name = `checklist ${String(n).padStart(2, '0')}: ${title}`;
  test(name, { timeout }, async (t) => {
    const cleanup = new Cleanup();
    await guarded(name, cleanup, () => volt, () => fn({ t, cleanup }));
  });
}

// ---------------------------------------------------------------------------
// Helpers

const sql = (text, values) => db.client.query(text, values);
const get = (query, opts) => request(volt, shapePath(query), opts);
const describe = (res) => `${res.status} ${res.text}`;

function ok(res) {
  assert.equal(res.status, 200, describe(res));
  return res;
}

const isUpToDate = (m) => m?.headers?.control === 'up-to-date';
const isChange = (m) => typeof m?.key === 'string';

/**
 * Catches up on a shape without live: offset=-1, then every chunk until the
 * response is up-to-date. Returns the handle, the tip offset and every message.
 */
async function catchUp(query) {
  const first = ok(await get({ ...query, offset: '-1' }));
  const handle = first.headers.get('electric-handle');
  let offset = first.headers.get('electric-offset');
  const messages = [...first.body];
  for (let i = 0; i < 100; i++) {
    const res = ok(await get({ ...query, handle, offset }));
    assert.equal(res.headers.get('electric-handle'), handle);
    messages.push(...res.body);
    offset = res.headers.get('electric-offset');
    if (res.headers.get('electric-up-to-date') != null) return { handle, offset, messages };
  }
  throw new Error(`no up-to-date after 100 chunks of ${JSON.stringify(query)}`);
}

/** Live requests from `offset` until one carries changes; returns that response. */
async function nextChanges(query, handle, offset) {
  return waitFor(
    async () => {
      const res = ok(await get({ ...query, handle, offset, live: 'true' }));
      return res.body.some(isChange) && res;
    },
    { timeout: 15_000, interval: 0, label: `changes after ${offset} in ${JSON.stringify(query)}` },
  );
}

/** Runs `statements` in one transaction; returns its xid (as a decimal string). */
async function inTransaction(...statements) {
  await sql('BEGIN');
  try {
    for (const s of statements) await sql(s);
    const { rows } = await sql('SELECT pg_current_xact_id()::text AS xid');
    await sql('COMMIT');
    return rows[0].xid;
  } catch (err) {
    await sql('ROLLBACK').catch(() => {});
    throw err;
  }
}

async function badRequest(query, expectedBody) {
  const res = await get(query);
  const what = `${JSON.stringify(query)} -> ${describe(res)}`;
  assert.equal(res.status, 400, what);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/, what);
  if (expectedBody) assert.deepEqual(res.body, expectedBody, what);
  else assert.equal(res.body?.message, 'Invalid request', what);
  return res;
}

const invalid = (param, ...messages) => ({ message: 'Invalid request', errors: { [param]: messages } });

async function deleteShape(query) {
  const res = await request(volt, shapePath(query), { method: 'DELETE' });
  assert.equal(res.status, 202, `DELETE ${JSON.stringify(query)}: ${describe(res)}`);
}

/** Polls a non-live request with a stale handle until it is answered with a 409. */
async function waitForConflict(query, handle, offset) {
  return waitFor(
    async () => {
      const res = await get({ ...query, handle, offset });
      if (res.status === 409) return res;
      assert.equal(res.status, 200, describe(res));
      return false;
    },
    { timeout: 15_000, interval: 50, label: `409 for handle ${handle} of ${JSON.stringify(query)}` },
  );
}

function assertMustRefetch(res, staleHandle) {
  assert.equal(res.status, 409, describe(res));
  assert.deepEqual(res.body, [{ headers: { control: 'must-refetch' } }]);
  const fresh = res.headers.get('electric-handle');
  assert.ok(fresh, 'a 409 carries the current handle');
  assert.notEqual(fresh, staleHandle);
  for (const h of ['electric-offset', 'electric-schema', 'electric-cursor', 'electric-up-to-date']) {
    assert.equal(res.headers.get(h), null, `no ${h} on a 409`);
  }
  return fresh;
}

async function dropSlot(slot) {
  await waitFor(
    async () => {
      const { rows } = await sql('SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      if (rows.length === 0) return true;
      if (rows[0].active_pid != null) {
        await sql('SELECT pg_terminate_backend($1)', [rows[0].active_pid]);
        return false;
      }
      await sql('SELECT pg_drop_replication_slot($1)', [slot]);
      return true;
    },
    { label: `replication slot ${slot} to be dropped` },
  );
}

const secondsSinceCursorEpoch = () => Math.floor((Date.now() - Date.UTC(2024, 9, 9)) / 1000);

// ---------------------------------------------------------------------------
// 1-8: snapshot, chunks, catch-up

item(1, 'offset=-1 returns 200 with a JSON array, electric-handle, electric-offset 0_0, electric-schema and no up-to-date', async ({ cleanup }) => {
  const res = ok(await get({ table: 'c01', offset: '-1' }));
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  assert.ok(Array.isArray(res.body), 'body is a JSON array');
  assert.ok(res.headers.get('electric-handle'), 'electric-handle');
  assert.equal(res.headers.get('electric-offset'), '0_0');
  assert.equal(res.headers.get('etag'), `"${res.headers.get('electric-handle')}:-1:0_0"`);
  assert.deepEqual(JSON.parse(res.headers.get('electric-schema')), {
    id: { type: 'int4', pk_index: 0, not_null: true },
    title: { type: 'text' },
  });
  assert.equal(res.headers.get('electric-up-to-date'), null, 'no up-to-date header');
  assert.ok(!res.body.some(isUpToDate), 'no up-to-date message');

  // The client builds its rows from exactly that.
  const s = openShape(volt, { table: 'c01' }, { cleanup });
  assert.deepEqual(byId(await s.initialRows()), [
    { id: 1, title: 'one' },
    { id: 2, title: 'two' },
  ]);
});

item(2, 'snapshot rows carry key, the full value as strings or null, and headers operation insert + relation', async ({ cleanup }) => {
  const res = ok(await get({ table: 'c02', offset: '-1' }));
  const rows = res.body.filter(isChange).sort((a, b) => Number(a.value.id) - Number(b.value.id));
  assert.deepEqual(rows, [
    {
      key: '"public"."c02"/"1"',
      value: {
        id: '1',
        title: 'one',
        n: '42',
        big: '9007199254740993',
        flag: 't',
        price: '1.50',
        meta: '{"a": 1}',
        tags: '{a,b}',
        code: 'ab  ',
        note: null,
      },
      headers: { operation: 'insert', relation: ['public', 'c02'] },
    },
    {
      key: '"public"."c02"/"2"',
      value: {
        id: '2',
        title: 'two',
        n: null,
        big: null,
        flag: 'f',
        price: null,
        meta: null,
        tags: null,
        code: null,
        note: 'x',
      },
      headers: { operation: 'insert', relation: ['public', 'c02'] },
    },
  ]);

  // The client parses them by the schema's types.
  const s = openShape(volt, { table: 'c02' }, { cleanup });
  const [one] = byId(await s.initialRows());
  assert.deepEqual(one, {
    id: 1,
    title: 'one',
    n: 42,
    big: 9007199254740993n,
    flag: true,
    price: '1.50',
    meta: { a: 1 },
    tags: ['a', 'b'],
    code: 'ab  ',
    note: null,
  });
});

item(3, 'the initial snapshot ends with snapshot-end carrying string xmin, xmax and xip_list', async () => {
  // A transaction left open while the snapshot is taken shows up in xip_list.
  const other = await db.connect();
  await other.query('BEGIN');
  const {
    rows: [{ xid }],
  } = await other.query('SELECT pg_current_xact_id()::text AS xid');
  let res;
  try {
    res = ok(await get({ table: 'c03', offset: '-1' }));
  } finally {
    await other.query('ROLLBACK');
  }
  const end = res.body.at(-1);
  assert.equal(end.headers.control, 'snapshot-end', JSON.stringify(res.body));
  assert.deepEqual(Object.keys(end.headers).sort(), ['control', 'xip_list', 'xmax', 'xmin']);
  assert.match(end.headers.xmin, DECIMAL);
  assert.match(end.headers.xmax, DECIMAL);
  assert.ok(BigInt(end.headers.xmin) <= BigInt(end.headers.xmax));
  assert.ok(Array.isArray(end.headers.xip_list));
  for (const x of end.headers.xip_list) assert.equal(typeof x, 'string');
  assert.ok(end.headers.xip_list.includes(xid), `open xid ${xid} in ${JSON.stringify(end.headers.xip_list)}`);
  assert.equal(res.body.filter((m) => m.headers?.control === 'snapshot-end').length, 1);
});

item(4, 'keys are "schema"."table"/"pk1"/"pk2" with / doubled and NULL as _, the same in snapshot and changes', async ({ cleanup }) => {
  const kt = openShape(volt, { table: 's04.kt' }, { cleanup });
  const nopk = openShape(volt, { table: 's04.nopk' }, { cleanup });
  await kt.initialRows();
  await nopk.initialRows();
  assert.deepEqual(kt.changes().map((m) => m.key).sort(), ['"s04"."kt"/"plain"/"2"', '"s04"."kt"/"x//y"/"1"']);
  // No primary key: every column, in column order, is part of the key.
  assert.deepEqual(nopk.changes().map((m) => m.key).sort(), ['"s04"."nopk"/"q//r"/_', '"s04"."nopk"/_/"1"']);

  await sql(`UPDATE s04.kt SET v = 'changed' WHERE a = 'x/y'`);
  await sql(`INSERT INTO s04.kt VALUES ('a/b/c', 3, 'third')`);
  await sql(`DELETE FROM s04.nopk WHERE b = 1`);
  await kt.waitMessages(() => kt.liveChanges().length === 2, 'two changes on s04.kt');
  await nopk.waitMessages(() => nopk.liveChanges().length === 1, 'one change on s04.nopk');
  assert.deepEqual(trace(kt.liveChanges()), ['update:"s04"."kt"/"x//y"/"1"', 'insert:"s04"."kt"/"a//b//c"/"3"']);
  assert.deepEqual(trace(nopk.liveChanges()), ['delete:"s04"."nopk"/_/"1"']);

  // In the schema and table names, / and . are doubled; the relation header keeps them.
  const weird = ok(await get({ table: 's04."we.ird/name"', offset: '-1' }));
  const [row] = weird.body.filter(isChange);
  assert.equal(row.key, '"s04"."we..ird//name"/"1"');
  assert.deepEqual(row.headers.relation, ['s04', 'we.ird/name']);
});

item(5, 'offset=0_0 after a one-chunk snapshot returns changes + up-to-date at the latest offset (0_inf if none)', async ({ cleanup }) => {
  const first = ok(await get({ table: 'c05', offset: '-1' }));
  const handle = first.headers.get('electric-handle');
  assert.equal(first.headers.get('electric-offset'), '0_0');
  assert.equal(first.body.at(-1).headers.control, 'snapshot-end', 'the whole snapshot is in chunk 0');

  // Nothing replicated yet: just up-to-date, at 0_inf.
  const empty = ok(await get({ table: 'c05', handle, offset: '0_0' }));
  assert.equal(empty.headers.get('electric-offset'), '0_inf');
  assert.equal(empty.headers.get('electric-up-to-date'), '');
  assert.equal(empty.body.length, 1, empty.text);
  assert.ok(isUpToDate(empty.body[0]));

  await sql(`INSERT INTO c05 VALUES (3, 'three')`);
  const live = await nextChanges({ table: 'c05' }, handle, '0_inf');
  const latest = live.headers.get('electric-offset');

  const res = ok(await get({ table: 'c05', handle, offset: '0_0' }));
  assert.equal(res.headers.get('electric-offset'), latest, 'the latest offset of the shape');
  assert.equal(res.headers.get('electric-up-to-date'), '');
  assert.deepEqual(
    res.body.map((m) => (isChange(m) ? `${m.headers.operation}:${m.key}` : m.headers.control)),
    [`insert:${keyOf('c05', 3)}`, 'up-to-date'],
  );

  // The client gets there the same way.
  const s = openShape(volt, { table: 'c05' }, { cleanup });
  assert.deepEqual(byId(await s.initialRows()).map((r) => r.id), [1, 2, 3]);
});

item(6, 'a big snapshot is served in chunks: offset=0_k returns chunk k+1 with electric-offset 0_(k+1)', async ({ cleanup }) => {
  const first = ok(await get({ table: 'c06', offset: '-1' }));
  const handle = first.headers.get('electric-handle');
  assert.equal(first.headers.get('electric-offset'), '0_0');
  const chunks = [first.body];
  let k = 0;
  let res;
  for (;;) {
    res = ok(await get({ table: 'c06', handle, offset: `0_${k}` }));
    const offset = res.headers.get('electric-offset');
    if (!/^0_\d+$/.test(offset)) break;
    assert.equal(offset, `0_${k + 1}`, `chunk after 0_${k}`);
    assert.equal(res.headers.get('electric-up-to-date'), null, 'snapshot chunks are never up-to-date');
    chunks.push(res.body);
    k += 1;
    assert.ok(k < 100, 'too many chunks');
  }
  // The request after the last chunk reaches the (empty) change log.
  assert.equal(res.headers.get('electric-offset'), '0_inf');
  assert.equal(res.headers.get('electric-up-to-date'), '');
  assert.ok(chunks.length >= 3, `expected several 4 KiB chunks, got ${chunks.length}`);

  const rows = chunks.flat().filter(isChange);
  assert.equal(rows.length, 200);
  assert.equal(new Set(rows.map((m) => m.key)).size, 200, 'no row twice');
  for (const [i, chunk] of chunks.entries()) {
    assert.ok(chunk.length > 0, `chunk ${i} is not empty`);
    const ends = chunk.filter((m) => m.headers?.control === 'snapshot-end').length;
    assert.equal(ends, i === chunks.length - 1 ? 1 : 0, `snapshot-end only ends the last chunk (chunk ${i})`);
    assert.ok(!chunk.some(isUpToDate));
  }

  const s = openShape(volt, { table: 'c06' }, { cleanup });
  assert.equal((await s.initialRows()).length, 200);
});

item(7, 'repeating a non-live (handle, offset) request returns the same offset and body', async () => {
  const { handle } = await catchUp({ table: 'c07' });
  await inTransaction(`INSERT INTO c07 VALUES (2, 'two')`, `INSERT INTO c07 VALUES (3, 'three')`);
  await nextChanges({ table: 'c07' }, handle, '0_inf');
  // A transaction bigger than a chunk: the change log is chunked too.
  await inTransaction(`INSERT INTO c07 SELECT g, repeat('y', 100) FROM generate_series(100, 159) g`);
  const logChunks = [];
  await waitFor(
    async () => {
      logChunks.length = 0;
      let offset = '0_inf';
      for (;;) {
        const res = ok(await get({ table: 'c07', handle, offset }));
        logChunks.push({ offset, res });
        offset = res.headers.get('electric-offset');
        if (res.headers.get('electric-up-to-date') != null) break;
      }
      return logChunks.flatMap(({ res }) => res.body.filter(isChange)).length === 62;
    },
    { label: 'the big transaction in the log' },
  );
  assert.ok(logChunks.length >= 2, `expected several log chunks, got ${logChunks.length}`);
  for (const { res } of logChunks.slice(0, -1)) assert.ok(!res.body.some(isUpToDate), 'only the last chunk is up-to-date');

  const big = ok(await get({ table: 'c06', offset: '-1' })).headers.get('electric-handle');
  const requests = [
    { table: 'c07', offset: '-1' },
    { table: 'c07', handle, offset: '0_0' },
    { table: 'c07', handle, offset: '0_inf' },
    { table: 'c06', handle: big, offset: '0_1' },
    ...logChunks.map(({ offset }) => ({ table: 'c07', handle, offset })),
  ];
  for (const query of requests) {
    const a = ok(await get(query));
    const b = ok(await get(query));
    const what = JSON.stringify(query);
    assert.equal(b.headers.get('electric-handle'), a.headers.get('electric-handle'), what);
    assert.equal(b.headers.get('electric-offset'), a.headers.get('electric-offset'), what);
    assert.equal(b.text, a.text, what);
    assert.equal(b.headers.get('etag'), a.headers.get('etag'), what);
  }
});

item(8, 'offset=now returns [up-to-date] with electric-has-data false, the schema and the latest offset', async () => {
  const now = ok(await get({ table: 'c08', offset: 'now' }));
  const handle = now.headers.get('electric-handle');
  assert.ok(handle);
  assert.equal(now.headers.get('electric-offset'), '0_inf', 'a new shape has nothing replicated');
  assert.equal(now.headers.get('electric-has-data'), 'false');
  assert.equal(now.headers.get('electric-up-to-date'), '');
  assert.ok(now.headers.get('electric-schema'), 'schema header');
  assert.equal(now.body.length, 1, now.text);
  assert.ok(isUpToDate(now.body[0]));
  assert.match(now.body[0].headers.global_last_seen_lsn, DECIMAL);

  // `now` does not wait for the snapshot: a row committed before the snapshot is
  // taken belongs to it, not to the log. offset=-1 waits for it.
  assert.equal(ok(await get({ table: 'c08', offset: '-1' })).headers.get('electric-handle'), handle);
  await sql(`INSERT INTO c08 VALUES (2, 'two')`);
  const latest = (await nextChanges({ table: 'c08' }, handle, '0_inf')).headers.get('electric-offset');
  const later = ok(await get({ table: 'c08', offset: 'now', handle: 'ignored' }));
  assert.equal(later.headers.get('electric-handle'), handle);
  assert.equal(later.headers.get('electric-offset'), latest);
  assert.deepEqual(later.body.map((m) => m.headers.control), ['up-to-date']);
});

// ---------------------------------------------------------------------------
// 9-20: parameters

item(9, 'missing offset is a 400 {"message":"Invalid request","errors":{"offset":["can\'t be blank"]}}', async () => {
  const res = await badRequest({ table: 'c01' }, invalid('offset', "can't be blank"));
  assert.equal(res.headers.get('cache-control'), 'no-store');
});

item(10, 'missing or non-existent table is a 400 naming errors.table', async () => {
  await badRequest({ offset: '-1' }, invalid('table', "can't be blank"));
  await badRequest(
    { table: 'nope', offset: '-1' },
    invalid('table', 'Table "public"."nope" does not exist. If the table name contains capitals or special characters you must quote it.'),
  );
  await badRequest({ table: 'nowhere.c10', offset: '-1' });
  for (const table of ['a.b.c', 'x'.repeat(64), '1abc', '"unterminated']) {
    const res = await badRequest({ table, offset: '-1' });
    assert.ok(res.body.errors?.table, `errors.table for ${table}: ${res.text}`);
  }
  // Unquoted names are lowercased, so "C10" is c10 but "\"C10\"" does not exist.
  ok(await get({ table: 'C10', offset: '-1' }));
  const quoted = await badRequest({ table: '"C10"', offset: '-1' });
  assert.ok(quoted.body.errors?.table, quoted.text);
});

item(11, 'offset=abc is a 400 with errors.offset ["has invalid format"]', async () => {
  for (const offset of ['abc', '1_x', '_1', '-2']) {
    await badRequest({ table: 'c01', offset }, invalid('offset', 'has invalid format'));
  }
});

item(12, 'offset=5_0 without a handle is a 400 with errors.handle', async () => {
  await badRequest({ table: 'c01', offset: '5_0' }, invalid('handle', "can't be blank when offset != -1"));
});

item(13, 'offset=-1&live=true is a 400 with errors.live; live_sse without live is a 400 with errors.live_sse', async () => {
  await badRequest({ table: 'c01', offset: '-1', live: 'true' }, invalid('live', "can't be true when offset == -1"));
  await badRequest({ table: 'c01', offset: 'now', live: 'true' }, invalid('live', "can't be true when offset is 'now'"));
  const sse = invalid('live_sse', "can't be true unless live is also true");
  await badRequest({ table: 'c01', offset: '-1', live_sse: 'true' }, sse);
  const { handle } = await catchUp({ table: 'c01' });
  await badRequest({ table: 'c01', handle, offset: '0_inf', live_sse: 'true' }, sse);
  await badRequest({ table: 'c01', handle, offset: '0_inf', live: 'false', experimental_live_sse: 'true' }, sse);
});

item(14, 'replica=x and log=x are 400s "is invalid"', async () => {
  await badRequest({ table: 'c01', offset: '-1', replica: 'x' }, invalid('replica', 'is invalid'));
  await badRequest({ table: 'c01', offset: '-1', log: 'x' }, invalid('log', 'is invalid'));
});

item(15, 'columns lacking a primary-key column is a 400 with errors.columns', async () => {
  await badRequest(
    { table: 'c15', offset: '-1', columns: 'title' },
    invalid('columns', 'The list of columns must include all primary key columns, missing: id'),
  );
  await badRequest(
    { table: 's04.kt', offset: '-1', columns: 'v' },
    invalid('columns', 'The list of columns must include all primary key columns, missing: a, b'),
  );
  await badRequest(
    { table: 'c15', offset: '-1', columns: 'id,nope' },
    invalid('columns', 'The following columns are not found on the table: nope'),
  );
  await badRequest({ table: 'c15', offset: '-1', columns: 'id,,title' }, invalid('columns', 'Invalid zero-length delimited identifier'));
});

item(16, 'a bad, unknown-column or non-boolean where is a 400 with errors.where "At location ..."', async () => {
  for (const where of ["title = 'x' AND", 'nope = 1', 'n + 1', 'title']) {
    const res = await badRequest({ table: 'c16', offset: '-1', where });
    const errors = res.body.errors?.where;
    assert.ok(Array.isArray(errors) && errors.length > 0, `errors.where for ${where}: ${res.text}`);
    assert.match(errors[0], /^At location \d+: /, `${where}: ${res.text}`);
  }
  const unknown = await badRequest({ table: 'c16', offset: '-1', where: 'n = 1 AND nope = 1' });
  assert.match(unknown.body.errors.where[0], /unknown reference nope/);
});

item(17, '$1 without params[1], or params not numbered 1..n, is a 400', async () => {
  await badRequest({ table: 'c16', offset: '-1', where: 'n = $1' }, invalid('where', 'At location 4: parameter $1 was not provided'));
  const gap = new URLSearchParams({ table: 'c16', offset: '-1', where: 'n = $1 OR n = $2' });
  gap.set('params[1]', '1');
  gap.set('params[3]', '3');
  const res = await request(volt, `/v1/shape?${gap}`);
  assert.equal(res.status, 400, describe(res));
  assert.deepEqual(res.body, invalid('params', 'Parameters must be numbered sequentially, starting from 1'));
  const named = new URLSearchParams({ table: 'c16', offset: '-1', where: 'n = $1', 'params[a]': '1' });
  const res2 = await request(volt, `/v1/shape?${named}`);
  assert.equal(res2.status, 400, describe(res2));
  assert.deepEqual(res2.body, invalid('params', 'Parameters can only use numbers as keys'));
  // With the parameter it is fine.
  ok(await get({ table: 'c16', offset: '-1', where: 'n = $1', 'params[1]': '1' }));
});

item(18, 'table="MyTable" and schema.table resolve; unquoted names are lowercased', async ({ cleanup }) => {
  const quoted = ok(await get({ table: '"MyTable"', offset: '-1' }));
  const [upper] = quoted.body.filter(isChange);
  assert.equal(upper.key, '"public"."MyTable"/"1"');
  assert.deepEqual(upper.headers.relation, ['public', 'MyTable']);
  assert.equal(upper.value.v, 'upper');

  const unquoted = ok(await get({ table: 'MyTable', offset: '-1' }));
  const [lower] = unquoted.body.filter(isChange);
  assert.equal(lower.key, '"public"."mytable"/"1"');
  assert.equal(lower.value.v, 'lower');
  const same = ok(await get({ table: 'public.mytable', offset: '-1' }));
  assert.equal(same.headers.get('electric-handle'), unquoted.headers.get('electric-handle'));

  const inSchema = ok(await get({ table: 's18.t', offset: '-1' }));
  const [row] = inSchema.body.filter(isChange);
  assert.equal(row.key, '"s18"."t"/"1"');
  assert.deepEqual(row.headers.relation, ['s18', 't']);
  const shouted = ok(await get({ table: 'S18.T', offset: '-1' }));
  assert.equal(shouted.headers.get('electric-handle'), inSchema.headers.get('electric-handle'));

  const s = openShape(volt, { table: '"MyTable"' }, { cleanup });
  assert.deepEqual(await s.initialRows(), [{ id: 1, v: 'upper' }]);
});

item(19, 'unknown params (cache-buster, expired_handle, log=full) are ignored and the handle is unchanged', async () => {
  const base = ok(await get({ table: 'c19', offset: '-1' }));
  const handle = base.headers.get('electric-handle');
  const extras = { 'cache-buster': 'abc123', expired_handle: 'old-handle', log: 'full', whatever: '1' };
  const res = ok(await get({ table: 'c19', offset: '-1', ...extras }));
  assert.equal(res.headers.get('electric-handle'), handle);
  assert.equal(res.text, base.text);
  // A handle sent with offset=-1 (the client does after a 409) is ignored too.
  const withHandle = ok(await get({ table: 'c19', offset: '-1', handle: 'some-other-handle', ...extras }));
  assert.equal(withHandle.headers.get('electric-handle'), handle);
  const next = ok(await get({ table: 'c19', offset: '0_0', handle, ...extras }));
  assert.equal(next.headers.get('electric-handle'), handle);
  assert.equal(next.headers.get('electric-up-to-date'), '');
});

item(20, 'live with an empty value or 1 is true', async () => {
  const { handle, offset } = await catchUp({ table: 'c20' });
  await sql(`INSERT INTO c20 VALUES (2, 'two')`);
  await nextChanges({ table: 'c20' }, handle, offset);
  // Data is pending at `offset`, so live requests answer at once; live ones carry a
  // cursor and no schema.
  const base = `/v1/shape?table=c20&handle=${encodeURIComponent(handle)}&offset=${offset}`;
  for (const live of ['&live', '&live=', '&live=1', '&live=true', '&live=yes']) {
    const res = await request(volt, base + live);
    assert.equal(res.status, 200, `${live}: ${describe(res)}`);
    assert.match(res.headers.get('electric-cursor') ?? '', DECIMAL, `${live} is live: cursor`);
    assert.equal(res.headers.get('electric-schema'), null, `${live} is live: no schema`);
  }
  const notLive = await request(volt, `${base}&live=false`);
  assert.equal(notLive.status, 200, describe(notLive));
  assert.equal(notLive.headers.get('electric-cursor'), null, 'live=false: no cursor');
  assert.ok(notLive.headers.get('electric-schema'), 'live=false: schema');
});

// ---------------------------------------------------------------------------
// 21-23: handles

item(21, 'the handle of a deleted, truncated or altered shape gets a 409 must-refetch with the new electric-handle', async ({ cleanup }) => {
  // Deleted.
  const a = await catchUp({ table: 'c21a' });
  await deleteShape({ table: 'c21a' });
  const afterDelete = assertMustRefetch(await get({ table: 'c21a', handle: a.handle, offset: a.offset }), a.handle);
  assert.equal(ok(await get({ table: 'c21a', offset: '-1' })).headers.get('electric-handle'), afterDelete);

  // Truncated: the client clears its rows and resyncs.
  const s = openShape(volt, { table: 'c21b' }, { cleanup });
  await s.initialRows();
  const b = await catchUp({ table: 'c21b' });
  await sql('TRUNCATE c21b');
  await sql(`INSERT INTO c21b VALUES (10, 'ten')`);
  const afterTruncate = assertMustRefetch(await waitForConflict({ table: 'c21b' }, b.handle, b.offset), b.handle);
  await s.waitMessages((msgs) => msgs.some((m) => m.headers?.control === 'must-refetch'), 'must-refetch in the client');
  await s.waitRows((rows) => rows.length === 1 && rows[0].id === 10, 'rows after the truncate');
  assert.equal(s.stream.shapeHandle, afterTruncate);

  // Altered.
  const c = await catchUp({ table: 'c21c' });
  await sql('ALTER TABLE c21c ADD COLUMN extra text');
  await sql(`INSERT INTO c21c VALUES (2, 'two', 'x')`);
  const afterAlter = assertMustRefetch(await waitForConflict({ table: 'c21c' }, c.handle, c.offset), c.handle);
  const fresh = ok(await get({ table: 'c21c', offset: '-1' }));
  assert.equal(fresh.headers.get('electric-handle'), afterAlter);
  assert.ok('extra' in JSON.parse(fresh.headers.get('electric-schema')), 'the new shape has the new column');

  // A live request parked at the tip when its shape is deleted gets the 409 at once.
  const parked = await catchUp({ table: 'c21a' });
  const started = Date.now();
  const waiting = get({ table: 'c21a', handle: parked.handle, offset: parked.offset, live: 'true' });
  await deleteShape({ handle: parked.handle });
  const rotated = await waiting;
  assert.ok(Date.now() - started < LONG_POLL_MS, 'answered by the delete, not by the timeout');
  assert.equal(rotated.status, 409, describe(rotated));
  assert.deepEqual(rotated.body, [{ headers: { control: 'must-refetch' } }]);
  assert.notEqual(rotated.headers.get('electric-handle'), parked.handle);
  assert.equal(
    rotated.headers.get('cache-control'),
    rotated.headers.get('electric-handle') ? 'public, max-age=60, must-revalidate' : 'public, max-age=1, must-revalidate',
  );
});

item(22, 'the handle of another definition gets a 409 with this definition\'s handle', async () => {
  const filtered = ok(await get({ table: 'c22', offset: '-1', where: 'id > 1' })).headers.get('electric-handle');
  const all = ok(await get({ table: 'c22', offset: '-1' })).headers.get('electric-handle');
  assert.notEqual(filtered, all);
  assert.equal(assertMustRefetch(await get({ table: 'c22', handle: filtered, offset: '0_0' }), filtered), all);
  assert.equal(
    assertMustRefetch(await get({ table: 'c22', where: 'id > 1', handle: all, offset: '0_0' }), all),
    filtered,
  );
  // No shape yet for this definition: it is created, and the 409 carries it.
  const created = assertMustRefetch(await get({ table: 'c22', columns: 'id', handle: all, offset: '0_0' }), all);
  assert.equal(ok(await get({ table: 'c22', columns: 'id', offset: '-1' })).headers.get('electric-handle'), created);
});

item(23, 'recreated shapes never reuse a handle', async () => {
  const seen = [];
  for (let i = 0; i < 3; i++) {
    const handle = ok(await get({ table: 'c23', offset: '-1' })).headers.get('electric-handle');
    seen.push(handle);
    await deleteShape({ handle });
  }
  const before = await catchUp({ table: 'c23' });
  seen.push(before.handle);
  await sql('TRUNCATE c23');
  seen.push(assertMustRefetch(await waitForConflict({ table: 'c23' }, before.handle, before.offset), before.handle));
  assert.equal(new Set(seen).size, seen.length, `handles ${JSON.stringify(seen)}`);
});

// ---------------------------------------------------------------------------
// 24-27: live mode

item(24, 'live at the tip with no change waits the long-poll timeout, then 200 [up-to-date] at the same offset with a cursor, no schema, has-data false', async () => {
  const { handle, offset } = await catchUp({ table: 'c24' });
  const started = Date.now();
  // Two at once: both time out, each with its own etag.
  const [a, b] = await Promise.all([
    get({ table: 'c24', handle, offset, live: 'true' }),
    get({ table: 'c24', handle, offset, live: 'true' }),
  ]);
  const held = Date.now() - started;
  assert.ok(held >= LONG_POLL_MS - 200, `held ${held} ms, expected about ${LONG_POLL_MS}`);
  assert.ok(held < LONG_POLL_MS + 3000, `held ${held} ms, expected about ${LONG_POLL_MS}`);
  for (const res of [ok(a), ok(b)]) {
    assert.equal(res.body.length, 1, res.text);
    assert.ok(isUpToDate(res.body[0]));
    assert.equal(res.headers.get('electric-offset'), offset, 'offset unchanged');
    assert.equal(res.headers.get('electric-handle'), handle);
    assert.equal(res.headers.get('electric-up-to-date'), '');
    assert.equal(res.headers.get('electric-has-data'), 'false');
    assert.match(res.headers.get('electric-cursor') ?? '', DECIMAL);
    assert.equal(res.headers.get('electric-schema'), null);
    assert.equal(res.headers.get('cache-control'), 'public, max-age=5, stale-while-revalidate=5');
  }
  assert.notEqual(a.headers.get('etag'), b.headers.get('etag'), 'no-data responses never share an etag');
});

item(25, 'live at the tip + INSERT promptly returns the insert (txids, string lsn, op_position, last) and up-to-date', async ({ cleanup }) => {
  const s = openShape(volt, { table: 'c25' }, { cleanup });
  await s.initialRows();
  const { handle, offset } = await catchUp({ table: 'c25' });

  const started = Date.now();
  const pending = get({ table: 'c25', handle, offset, live: 'true' });
  const xid = await inTransaction(`INSERT INTO c25 VALUES (1, 'one')`);
  const res = ok(await pending);
  assert.ok(Date.now() - started < LONG_POLL_MS, 'answered by the insert, not by the timeout');
  assert.equal(res.headers.get('electric-up-to-date'), '');
  assert.equal(res.headers.get('electric-has-data'), 'true');
  assert.equal(res.body.length, 2, res.text);
  const [insert, upToDate] = res.body;
  assert.equal(insert.key, keyOf('c25', 1));
  assert.deepEqual(insert.value, { id: '1', title: 'one' });
  assert.deepEqual(Object.keys(insert.headers).sort(), ['last', 'lsn', 'op_position', 'operation', 'relation', 'txids']);
  assert.equal(insert.headers.operation, 'insert');
  assert.deepEqual(insert.headers.txids, [Number(BigInt(xid) % 2n ** 32n)]);
  assert.match(insert.headers.lsn, DECIMAL);
  assert.equal(typeof insert.headers.op_position, 'number');
  assert.equal(insert.headers.last, true);
  assert.equal(res.headers.get('electric-offset'), `${insert.headers.lsn}_${insert.headers.op_position}`);
  assert.ok(isUpToDate(upToDate));
  assert.equal(upToDate.headers.global_last_seen_lsn, insert.headers.lsn);

  // The client sees the same change.
  await s.waitRows((rows) => rows.length === 1, 'the insert in the client');
  const [seen] = s.liveChanges();
  assert.deepEqual(seen.value, { id: 1, title: 'one' });
  assert.deepEqual(seen.headers.txids, insert.headers.txids);
  assert.equal(seen.headers.lsn, insert.headers.lsn);
});

item(26, 'live with data already pending answers immediately', async () => {
  const { handle, offset } = await catchUp({ table: 'c26' });
  await sql(`INSERT INTO c26 VALUES (1, 'one')`);
  await waitFor(async () => ok(await get({ table: 'c26', handle, offset })).body.some(isChange), {
    label: 'the insert in the log',
  });
  const started = Date.now();
  const res = ok(await get({ table: 'c26', handle, offset, live: 'true' }));
  const took = Date.now() - started;
  assert.ok(took < LONG_POLL_MS / 2, `took ${took} ms`);
  assert.deepEqual(
    res.body.map((m) => (isChange(m) ? m.headers.operation : m.headers.control)),
    ['insert', 'up-to-date'],
  );
});

item(27, 'the cursor is a multiple of the long-poll timeout since 2024-10-09 and exceeds any cursor param at or past it', async () => {
  // Electric's interval is the long-poll timeout in seconds (20 s by default; 2 s here).
  const T = LONG_POLL_MS / 1000;
  const { handle } = await catchUp({ table: 'c26' }); // item 26 left a change after 0_inf
  const live = (cursor) => get({ table: 'c26', handle, offset: '0_inf', live: 'true', cursor });

  const before = secondsSinceCursorEpoch();
  const res = ok(await live(undefined));
  const afterS = secondsSinceCursorEpoch();
  assert.ok(res.body.some(isChange), 'answered at once');
  const c = Number(res.headers.get('electric-cursor'));
  assert.equal(c % T, 0, `cursor ${c} is a multiple of ${T}`);
  assert.ok(c >= before && c <= afterS + T, `cursor ${c} is the next interval after ${before}..${afterS}`);

  // A cursor at or past the current one: the answer moves past it by 1 s to 1 h.
  for (const p of [c, c + 100_000]) {
    const next = Number(ok(await live(String(p))).headers.get('electric-cursor'));
    assert.ok(next > p && next <= p + 3600, `cursor ${next} after cursor=${p}`);
  }
  // An older or non-numeric cursor does not matter.
  for (const p of [String(c - 10 * T), 'abc']) {
    const next = Number(ok(await live(p)).headers.get('electric-cursor'));
    assert.equal(next % T, 0);
    assert.ok(next >= c && next <= secondsSinceCursorEpoch() + T, `cursor ${next} after cursor=${p}`);
  }
});

// ---------------------------------------------------------------------------
// 28-31: change messages

item(28, 'replica=default: an update carries the PK and changed columns, a delete the PK only', async ({ cleanup }) => {
  const s = openShape(volt, { table: 'c28' }, { cleanup });
  await s.initialRows();
  await sql(`INSERT INTO c28 VALUES (1, 'a', 'b')`);
  await sql(`UPDATE c28 SET b = 'B' WHERE id = 1`);
  await sql(`DELETE FROM c28 WHERE id = 1`);
  await s.waitMessages(() => s.liveChanges().length === 3, 'insert, update, delete');
  const [insert, update, del] = s.liveChanges();
  assert.deepEqual(insert.value, { id: 1, a: 'a', b: 'b' });
  assert.equal(update.headers.operation, 'update');
  assert.deepEqual(update.value, { id: 1, b: 'B' });
  assert.equal(update.old_value, undefined);
  assert.equal(del.headers.operation, 'delete');
  assert.deepEqual(del.value, { id: 1 });
});

item(29, 'replica=full: an update carries the full value and old_value of the changed columns, a delete the full row', async ({ cleanup }) => {
  const s = openShape(volt, { table: 'c29', replica: 'full' }, { cleanup });
  await s.initialRows();
  await sql(`INSERT INTO c29 VALUES (1, 'a', 'b')`);
  await sql(`UPDATE c29 SET b = 'B' WHERE id = 1`);
  await sql(`DELETE FROM c29 WHERE id = 1`);
  await s.waitMessages(() => s.liveChanges().length === 3, 'insert, update, delete');
  const [insert, update, del] = s.liveChanges();
  assert.deepEqual(insert.value, { id: 1, a: 'a', b: 'b' });
  assert.equal(update.headers.operation, 'update');
  assert.deepEqual(update.value, { id: 1, a: 'a', b: 'B' });
  assert.deepEqual(update.old_value, { b: 'b' });
  assert.equal(del.headers.operation, 'delete');
  assert.deepEqual(del.value, { id: 1, a: 'a', b: 'B' });
});

item(30, 'where shapes: an update moving a row in is an insert, moving it out a delete', async ({ cleanup }) => {
  const s = openShape(volt, { table: 'c30', where: 'n > 10' }, { cleanup });
  assert.deepEqual(await s.initialRows(), [{ id: 2, title: 'high', n: 20 }]);
  await sql(`UPDATE c30 SET n = 11 WHERE id = 1`);
  await sql(`UPDATE c30 SET n = 5 WHERE id = 2`);
  await s.waitMessages(() => s.liveChanges().length === 2, 'move in and move out');
  const [moveIn, moveOut] = s.liveChanges();
  assert.equal(moveIn.headers.operation, 'insert');
  assert.equal(moveIn.key, keyOf('c30', 1));
  assert.deepEqual(moveIn.value, { id: 1, title: 'low', n: 11 }, 'a move-in carries the full row');
  assert.equal(moveOut.headers.operation, 'delete');
  assert.equal(moveOut.key, keyOf('c30', 2));
  assert.deepEqual(s.shape.currentRows, [{ id: 1, title: 'low', n: 11 }]);
});

item(31, 'a primary-key update is a delete with key_change_to and an insert with key_change_from', async ({ cleanup }) => {
  const s = openShape(volt, { table: 'c31' }, { cleanup });
  await s.initialRows();
  await sql(`UPDATE c31 SET id = 10 WHERE id = 1`);
  await s.waitMessages(() => s.liveChanges().length === 2, 'delete + insert');
  const [del, insert] = s.liveChanges();
  assert.equal(del.headers.operation, 'delete');
  assert.equal(del.key, keyOf('c31', 1));
  assert.equal(del.headers.key_change_to, keyOf('c31', 10));
  assert.deepEqual(del.value, { id: 1 });
  assert.equal(insert.headers.operation, 'insert');
  assert.equal(insert.key, keyOf('c31', 10));
  assert.equal(insert.headers.key_change_from, keyOf('c31', 1));
  assert.deepEqual(insert.value, { id: 10, title: 'one' });
  assert.equal(insert.headers.lsn, del.headers.lsn, 'one transaction');
  assert.equal(insert.headers.op_position, del.headers.op_position + 1, 'the insert follows at op + 1');
  assert.equal(insert.headers.last, true);
  assert.deepEqual(s.shape.currentRows, [{ id: 10, title: 'one' }]);
});

// ---------------------------------------------------------------------------
// 32-35: HTTP caching, CORS, SSE

item(32, 'cache-control matches the kind of response', async () => {
  const cc = (res) => res.headers.get('cache-control');
  const initial = ok(await get({ table: 'c32', offset: '-1' }));
  const handle = initial.headers.get('electric-handle');
  assert.equal(cc(initial), 'public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746');
  const nonLive = ok(await get({ table: 'c32', handle, offset: '0_0' }));
  assert.equal(cc(nonLive), 'public, max-age=60, stale-while-revalidate=300');
  assert.equal(cc(ok(await get({ table: 'c32', offset: 'now' }))), 'public, max-age=60, stale-while-revalidate=300');

  await sql('INSERT INTO c32 VALUES (2)');
  const live = await nextChanges({ table: 'c32' }, handle, '0_inf');
  assert.equal(cc(live), 'public, max-age=5, stale-while-revalidate=5');
  // SSE with data pending writes it and ends.
  const sse = ok(await get({ table: 'c32', handle, offset: '0_inf', live: 'true', live_sse: 'true' }));
  assert.equal(cc(sse), 'public, max-age=59');

  const conflict = await get({ table: 'c32', handle: 'not-a-handle', offset: '0_0' });
  assert.equal(conflict.status, 409);
  assert.equal(cc(conflict), 'public, max-age=60, must-revalidate');

  const bad = await get({ table: 'c32', offset: 'abc' });
  assert.equal(bad.status, 400);
  assert.equal(cc(bad), 'no-store');
  assert.equal(bad.headers.get('surrogate-control'), 'no-store');

  const del = await request(volt, shapePath({ table: 'c32' }), { method: 'DELETE' });
  assert.equal(del.status, 202);
  assert.equal(cc(del), 'no-cache');
});

item(33, 'If-None-Match equal to the etag is a 304 with an empty body', async () => {
  const { handle } = await catchUp({ table: 'c33' });
  for (const query of [
    { table: 'c33', offset: '-1' },
    { table: 'c33', handle, offset: '0_0' },
  ]) {
    const first = ok(await get(query));
    const etag = first.headers.get('etag');
    assert.match(etag ?? '', /^".+"$/, 'a quoted etag');
    for (const inm of [etag, etag.slice(1, -1), `"other", ${etag}`]) {
      const res = await get(query, { headers: { 'if-none-match': inm } });
      assert.equal(res.status, 304, `${JSON.stringify(query)} with If-None-Match ${inm}: ${describe(res)}`);
      assert.equal(res.text, '');
    }
    assert.equal((await get(query, { headers: { 'if-none-match': '"other"' } })).status, 200);
  }
  // No-data responses carry a unique etag, so they never revalidate.
  const now = ok(await get({ table: 'c33', offset: 'now' }));
  const again = await get({ table: 'c33', offset: 'now' }, { headers: { 'if-none-match': now.headers.get('etag') } });
  assert.equal(again.status, 200);
});

item(34, 'CORS exposes every electric-* header; OPTIONS is a 204 with max-age 86400', async () => {
  const origin = 'http://app.example';
  const required = ['electric-handle', 'electric-offset', 'electric-schema', 'electric-cursor', 'electric-up-to-date', 'electric-has-data'];
  const { handle } = await catchUp({ table: 'c34' });
  const responses = [
    ok(await get({ table: 'c34', offset: '-1' }, { headers: { origin } })),
    ok(await get({ table: 'c34', handle, offset: 'now' }, { headers: { origin } })),
    await get({ table: 'c34', offset: 'abc' }, { headers: { origin } }),
    await get({ table: 'c34', handle: 'stale', offset: '0_0' }, { headers: { origin } }),
  ];
  for (const res of responses) {
    assert.equal(res.headers.get('access-control-allow-origin'), origin, describe(res));
    const exposed = (res.headers.get('access-control-expose-headers') ?? '').split(',').map((h) => h.trim().toLowerCase());
    for (const h of required) assert.ok(exposed.includes(h), `${h} exposed on a ${res.status}`);
  }
  const noOrigin = ok(await get({ table: 'c34', offset: '-1' }));
  assert.equal(noOrigin.headers.get('access-control-allow-origin'), '*');

  const preflight = await request(volt, '/v1/shape?table=c34&offset=-1', {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'GET', 'access-control-request-headers': 'if-none-match' },
  });
  assert.equal(preflight.status, 204, describe(preflight));
  assert.equal(preflight.text, '');
  assert.equal(preflight.headers.get('access-control-max-age'), '86400');
  assert.equal(preflight.headers.get('access-control-allow-origin'), origin);
  const methods = (preflight.headers.get('access-control-allow-methods') ?? '').split(',').map((m) => m.trim());
  for (const m of ['GET', 'HEAD', 'DELETE', 'OPTIONS']) assert.ok(methods.includes(m), `${m} allowed`);
  assert.match(preflight.headers.get('access-control-allow-headers') ?? '', /if-none-match/i);
});

/** Reads an SSE response; `events` fills as they arrive, `done` settles when it ends. */
function readEvents(res) {
  const events = [];
  const decoder = new TextDecoder();
  let buffer = '';
  const reader = res.body.getReader();
  const done = (async () => {
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        events.push(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
    return buffer;
  })();
  return { events, done, cancel: () => reader.cancel().catch(() => {}) };
}

item(35, 'SSE: text/event-stream, data: {json} events, up-to-date per batch, keep-alives, ends after the SSE timeout', async ({ cleanup }) => {
  const { handle, offset } = await catchUp({ table: 'c35' });
  const url = `${volt.url}${shapePath({ table: 'c35', handle, offset, live: 'true', live_sse: 'true' })}`;
  const started = Date.now();
  const res = await fetch(url, { signal: AbortSignal.timeout(15_000) });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  assert.equal(res.headers.get('electric-handle'), handle);
  assert.equal(res.headers.get('electric-offset'), offset);
  assert.match(res.headers.get('electric-cursor') ?? '', DECIMAL);
  assert.equal(res.headers.get('electric-schema'), null);
  assert.equal(res.headers.get('electric-up-to-date'), '', 'at the tip when the stream starts');
  const stream = readEvents(res);
  cleanup.defer(stream.cancel);

  await sql(`INSERT INTO c35 VALUES (1, 'one')`);
  const data = () => stream.events.filter((e) => e.startsWith('data: ')).map((e) => JSON.parse(e.slice(6)));
  await waitFor(() => data().some(isUpToDate), { label: 'insert and up-to-date events' });
  const [insert, upToDate] = data();
  assert.equal(insert.key, keyOf('c35', 1));
  assert.equal(insert.headers.operation, 'insert');
  assert.ok(isUpToDate(upToDate));
  assert.equal(upToDate.headers.global_last_seen_lsn, insert.headers.lsn, 'up-to-date at the batch end');

  await waitFor(() => stream.events.includes(': keep-alive'), { label: 'a keep-alive comment' });
  const rest = await stream.done;
  const lasted = Date.now() - started;
  assert.equal(rest, '', 'every event ends with a blank line');
  assert.ok(lasted >= SSE_MS - 200 && lasted < SSE_MS + 3000, `stream lasted ${lasted} ms, expected about ${SSE_MS}`);
  for (const e of stream.events) assert.ok(e === ': keep-alive' || /^data: \{.*\}$/s.test(e), `event ${JSON.stringify(e)}`);

  // With data already there when the request comes, the events are written and the
  // stream ends at once.
  const quick = Date.now();
  const pending = await fetch(url, { signal: AbortSignal.timeout(15_000) });
  assert.equal(pending.headers.get('electric-up-to-date'), null, 'not up-to-date: data follows');
  const events = readEvents(pending);
  cleanup.defer(events.cancel);
  await events.done;
  assert.ok(Date.now() - quick < SSE_MS / 2, `ended after ${Date.now() - quick} ms`);
  assert.deepEqual(
    events.events.map((e) => JSON.parse(e.slice(6))).map((m) => (isChange(m) ? m.key : m.headers.control)),
    [keyOf('c35', 1), 'up-to-date'],
  );

  // The client in SSE mode.
  const s = openShape(volt, { table: 'c35' }, { cleanup, liveSse: true });
  await s.initialRows();
  await sql(`INSERT INTO c35 VALUES (2, 'two')`);
  await s.waitRows((rows) => rows.some((r) => r.id === 2), 'insert over SSE');
});

// ---------------------------------------------------------------------------
// 36-38: health, secret, out of bounds

item(36, '/v1/health is 200 active when ready, 202 starting before and 202 waiting behind another instance on the slot', async ({ cleanup }) => {
  const health = await request(volt, '/v1/health');
  assert.equal(health.status, 200, describe(health));
  assert.deepEqual(health.body, { status: 'active' });
  assert.match(health.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(health.headers.get('cache-control'), 'no-cache, no-store, must-revalidate');

  // A volt whose database does not answer stays starting.
  const deadPort = await freePort();
  const starting = await startVolt({
    databaseUrl: `postgresql://postgres@127.0.0.1:${deadPort}/none`,
    streamId: `${db.streamId}_down`,
    ready: 'listening',
  });
  cleanup.defer(() => starting.stop());
  const res = await request(starting, '/v1/health');
  assert.equal(res.status, 202, describe(res));
  assert.deepEqual(res.body, { status: 'starting' });

  // A second volt on the shared volt's slot waits for the slot's lock: 202 waiting.
  const second = await startVolt({ databaseUrl: db.url, streamId: db.streamId, env: ENV, ready: 'listening' });
  cleanup.defer(() => second.stop());
  await waitFor(async () => (await request(second, '/v1/health')).body?.status === 'waiting', {
    label: 'second volt waiting on the slot lock',
  });
  const waiting = await request(second, '/v1/health');
  assert.equal(waiting.status, 202, describe(waiting));
});

item(37, 'with a secret, a missing or wrong one is a 401, api_secret works, OPTIONS and health stay open', async ({ cleanup }) => {
  const secret = 'checklist-secret';
  const guarded = await startVolt({ databaseUrl: db.url, streamId: `${db.streamId}_sec`, secret, env: ENV });
  cleanup.defer(async () => {
    await guarded.stop();
    // The database cannot be dropped while a logical slot of it remains.
    await dropSlot(`electric_slot_${db.streamId}_sec`);
  });
  const path = (extra) => shapePath({ table: 'c01', offset: '-1', ...extra });
  for (const extra of [{}, { secret: 'wrong' }, { api_secret: 'wrong' }]) {
    const res = await request(guarded, path(extra));
    assert.equal(res.status, 401, `${JSON.stringify(extra)}: ${describe(res)}`);
    assert.deepEqual(res.body, { message: 'Unauthorized - Invalid API secret' });
  }
  for (const extra of [{ secret }, { api_secret: secret }]) {
    ok(await request(guarded, path(extra)));
  }
  const preflight = await request(guarded, path({}), {
    method: 'OPTIONS',
    headers: { origin: 'http://app.example', 'access-control-request-method': 'GET' },
  });
  assert.equal(preflight.status, 204, describe(preflight));
  const health = await request(guarded, '/v1/health');
  assert.equal(health.status, 200, describe(health));

  const s = openShape(guarded, { table: 'c01', secret }, { cleanup });
  assert.equal((await s.initialRows()).length, 2);
});

item(38, 'an offset beyond the log waits the out-of-bounds timeout, then 400 errors.offset ["out of bounds for this shape"]', async () => {
  const { handle, offset } = await catchUp({ table: 'c38' });
  await sql('INSERT INTO c38 VALUES (1)');
  const res = await nextChanges({ table: 'c38' }, handle, offset);
  const lsn = BigInt(res.headers.get('electric-offset').split('_')[0]);
  const expected = invalid('offset', 'out of bounds for this shape');
  for (const query of [
    { table: 'c38', handle, offset: `${lsn + 1_000_000n}_0` },
    { table: 'c38', handle, offset: `${lsn}_${1000}`, live: 'true' },
  ]) {
    const started = Date.now();
    await badRequest(query, expected);
    const waited = Date.now() - started;
    assert.ok(waited >= OUT_OF_BOUNDS_MS - 100, `answered after ${waited} ms, expected about ${OUT_OF_BOUNDS_MS}`);
  }
  // The tip itself is not out of bounds.
  ok(await get({ table: 'c38', handle, offset: res.headers.get('electric-offset') }));
});
