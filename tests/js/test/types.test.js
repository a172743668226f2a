// Values of every type as the real client parses them. The Rust e2e test
// (tests/e2e/types.rs) proves that volt sends, for the same table, exactly the
// text Postgres prints and the electric-schema header Electric emits; the
// client's parse depends only on those two, so what it yields here is what it
// yields against Electric. The expected values below are written out by hand
// from the client's rules: int2/int4/float4/float8 -> Number, int8 -> BigInt,
// bool -> boolean, json/jsonb -> JSON.parse, `dims` -> array parse, anything
// else (numeric, dates, enums, domains, ...) stays the Postgres text.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { openShape, request, shapePath } from '../support/shape.js';
import { REPO_ROOT, voltTest } from '../support/volt.js';

const EVERY_TYPE = readFileSync(path.join(REPO_ROOT, 'tests', 'fixtures', 'every_type.sql'), 'utf8');

// Columns of rows 4-7, which are NULL everywhere but these.
const SPARSE = ['id', 'f4', 'f8', 'num', 'num_ps', 't_nn'];

const md5 = (s) => createHash('md5').update(s).digest('hex');
// The fixture's out-of-line `big` value.
const BIG = Array.from({ length: 4000 }, (_, i) => md5(String(i + 1))).join('');

const COLUMNS = [
  'id', 'i2', 'i4', 'i8', 'f4', 'f8', 'num', 'num_ps', 't', 't_nn', 'vc', 'vc_any', 'ch', 'ch1',
  'b', 'u', 'd', 'tm', 'tm3', 'ttz', 'ts', 'ts0', 'tstz', 'tstz3', 'iv', 'iv_ds', 'iv_ym', 'iv_p',
  'j', 'jb', 'by', 'bt', 'vb', 'vb8', 'm', 'pi', 'st', 'ip', 'net', 'mac', 'pt', 'mny', 'r4', 'big',
  'ai', 'ai2', 'at', 'ab', 'ai8', 'af8', 'ajb', 'avc', 'anum', 'ats', 'am', 'aby',
];

function sparse(values) {
  const row = Object.fromEntries(COLUMNS.map((c) => [c, null]));
  return Object.assign(row, values);
}

const EXPECTED = {
  1: {
    id: 1, i2: 1, i4: 2, i8: 3n, f4: 1.5, f8: 2.25, num: '12.5', num_ps: '3.14',
    t: 'hello', t_nn: 'not null', vc: 'varchar', vc_any: 'any',
    ch: 'ab   ', // char(n) keeps its padding
    ch1: 'x', b: true, u: 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    d: '2024-02-29', tm: '13:14:15', tm3: '13:14:15.123', ttz: '13:14:15+05:30',
    ts: '2024-01-02 03:04:05.678901', ts0: '2024-01-02 03:04:06',
    tstz: '2024-06-01 10:00:00.5+00', tstz3: '2024-06-01 12:00:00.123+00',
    iv: 'P1Y2M3DT4H5M6.789S', iv_ds: 'P3DT4H5M6.79S', iv_ym: 'P1Y2M', iv_p: 'PT1.235S',
    j: { b: 1, a: [1, 2.5, 'x'] }, jb: { a: [1, 2.5, 'x'], b: 1, c: { d: null } },
    by: '\\x00ff10', bt: '1010', vb: '1', vb8: '101',
    m: 'happy', pi: '42', st: 'hey', // enum and domains: no parser, text
    ip: '192.168.0.1', net: '10.0.0.0/8', mac: '08:00:2b:01:02:03', pt: '(1.5,-2)',
    mny: '$12.34', r4: '[1,10)', big: BIG,
    ai: [1, null, 3], ai2: [[1, 2], [3, 4]],
    at: ['a b', 'quo"te', 'back\\slash', '', null, 'NULL', 'comma,', 'brace{}', 'é✓🚀'],
    ab: [true, false, null],
    ai8: [9223372036854775807n, -9223372036854775808n],
    af8: [NaN, Infinity, -Infinity, -0, 1.5],
    ajb: [{ a: 1 }, null, [1, 'x'], 'str'],
    avc: ['ab', 'c'], anum: ['1.5', null, '-2.0'],
    ats: ['2024-01-01 00:00:00+00', 'infinity'],
    am: ['sad', 'with space', 'quo"te'], aby: ['\\x00ff', '\\x'],
  },
  2: {
    id: 2, i2: -32768, i4: -2147483648, i8: -9223372036854775808n, f4: NaN, f8: Infinity,
    num: '-123456789012345678901234567890.123456789012345678901234567890', num_ps: '-99999999.99',
    t: 'quote \' double " backslash \\ newline \n tab \t unicode héllo ✓ 🚀',
    t_nn: '', vc: '', vc_any: '', ch: 'a    ', ch1: ' ', b: false,
    u: '00000000-0000-0000-0000-000000000000',
    d: '4713-01-01 BC', tm: '24:00:00', tm3: '00:00:00', ttz: '00:00:00-15:59',
    ts: 'infinity', ts0: '-infinity', tstz: 'infinity', tstz3: '-infinity',
    iv: 'P-178000000Y', iv_ds: 'P-1DT-0.01S', iv_ym: 'P-1Y', iv_p: 'PT0S',
    j: 'é', // json text "\u00e9", parsed
    jb: null, // a JSON null, not an SQL NULL
    by: '\\x', bt: '0000', vb: '', vb8: '11111111',
    m: 'with space', pi: '2147483647', st: '',
    ip: '::1', net: '::/0', mac: 'ff:ff:ff:ff:ff:ff', pt: '(-0,1e+300)',
    mny: '-$92,233,720,368,547,758.08', r4: 'empty', big: '',
    ai: [], ai2: [[null, null]], at: [], ab: [], ai8: [], af8: [], ajb: [], avc: [], anum: [],
    ats: [], am: [], aby: [],
  },
  3: {
    id: 3, i2: 32767, i4: 2147483647, i8: 9223372036854775807n, f4: -Infinity, f8: -0,
    num: 'NaN', num_ps: '0.00', t: 'NULL', t_nn: ' ', vc: 'twelve chars', vc_any: 'x'.repeat(300),
    ch: '     ', ch1: null, b: null, u: 'ffffffff-ffff-ffff-ffff-ffffffffffff',
    d: 'infinity', tm: '00:00:00.000001', tm3: '24:00:00', ttz: '24:00:00+15:59',
    ts: '0044-03-15 12:00:00 BC', ts0: '1999-12-31 23:59:59',
    tstz: '1970-01-01 00:00:00+00', tstz3: '1999-12-31 10:00:00+00',
    iv: 'P1M-1DT0.000001S', iv_ds: 'P100D', iv_ym: 'P1Y1M', iv_p: 'PT-0.001S',
    j: [1, 2, 3], jb: [{ k: 'v"x' }, true, 100],
    by: `\\x${'ab'.repeat(100)}`, bt: '1111', vb: '0101010101', vb8: null,
    m: 'quo"te', pi: '1', st: 'abcde',
    ip: '10.1.2.3/24', net: '192.168.0.0/16', mac: '00:00:00:00:00:00', pt: '(0,0)',
    mny: '$0.00', r4: '(,)', big: null,
    ai: [-2147483648], ai2: [[1], [2], [3]], at: ['{}', '"', ' '], ab: [false], ai8: [0n],
    af8: [3.4028234663852886e38, 5e-324, 1e-7],
    ajb: null, avc: null, anum: ['99.9'], ats: ['4713-01-01 00:00:00+00 BC'], am: [], aby: ['\\x'],
  },
  // float4 prints the shortest text that reads back as the same float4; the
  // client reads that text as a float8.
  4: sparse({
    id: 4, f4: 3.4028235e38, f8: 1.7976931348623157e308,
    num: '0.000000000000000000000000000001000', num_ps: '0.01', t_nn: 'x',
  }),
  5: sparse({ id: 5, f4: 1e-45, f8: 5e-324, num: 'Infinity', t_nn: 'y' }),
  6: sparse({ id: 6, f4: -0, f8: 0.1, num: '-Infinity', t_nn: 'z' }),
  7: sparse({
    id: 7, f4: 1.1754944e-38, f8: 2.2250738585072014e-308,
    num: `0.${'0'.repeat(999)}1`, t_nn: 'w',
  }),
};

function assertRow(got, want, what) {
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), `${what}: columns`);
  for (const col of COLUMNS) {
    // deepStrictEqual: NaN equals NaN, -0 differs from 0, 1n differs from 1.
    assert.deepEqual(got[col], want[col], `${what}, column ${col}`);
  }
}

voltTest(
  'the client parses every type from the snapshot and the live stream into the expected JS values',
  { setup: EVERY_TYPE },
  async ({ db, volt, cleanup }) => {
    assert.equal(Object.keys(EXPECTED[4]).length, COLUMNS.length);
    assert.ok(SPARSE.every((c) => COLUMNS.includes(c)));

    // The header the client parses with (its exact Electric form is asserted in
    // the Rust test); spot-check the parts that steer the parse.
    const raw = await request(volt, shapePath({ table: 'every_type', offset: '-1' }));
    assert.equal(raw.status, 200, raw.text);
    const schema = JSON.parse(raw.headers.get('electric-schema'));
    assert.deepEqual(Object.keys(schema).sort(), [...COLUMNS].sort());
    assert.deepEqual(schema.ai2, { type: 'int4', dims: 2 });
    assert.deepEqual(schema.m, { type: 'mood' });
    assert.deepEqual(schema.pi, { type: 'posint' });

    const s = openShape(volt, { table: 'every_type' }, { cleanup });
    const initial = await s.initialRows();
    assert.equal(initial.length, 7);
    for (const row of initial) assertRow(row, EXPECTED[row.id], `snapshot row ${row.id}`);

    // The same values through replication: copies of every row, then row 1
    // overwritten with row 2's values.
    await db.client.query(`
      BEGIN;
      CREATE TEMP TABLE copy ON COMMIT DROP AS SELECT * FROM every_type;
      UPDATE copy SET id = id + 100;
      INSERT INTO every_type SELECT * FROM copy;
      COMMIT;
    `);
    const others = COLUMNS.filter((c) => c !== 'id').map((c) => `"${c}"`).join(', ');
    await db.client.query(
      `UPDATE every_type SET (${others}) = (SELECT ${others} FROM every_type WHERE id = 2) WHERE id = 1`,
    );
    await s.waitRows(
      (rows) => rows.length === 14 && rows.find((r) => r.id === 1)?.b === false,
      'copies and the update',
    );
    const live = s.liveChanges();
    assert.equal(live.length, 8, 'seven inserts and one update');
    for (const msg of live.filter((m) => m.headers.operation === 'insert')) {
      const id = msg.value.id;
      assertRow(msg.value, { ...EXPECTED[id - 100], id }, `live insert ${id}`);
    }
    for (const row of s.shape.currentRows) {
      const want = row.id === 1 ? { ...EXPECTED[2], id: 1 } : { ...EXPECTED[row.id % 100], id: row.id };
      assertRow(row, want, `materialised row ${row.id}`);
    }
  },
);
