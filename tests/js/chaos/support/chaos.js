// Chaos harness: a volt under a steady write load, several real @electric-sql/client
// subscribers, and faults injected one at a time or in bursts (actor kills through the
// admin API, the walsender terminated, Postgres restarted). After each the writer stops, a marker
// transaction is written, every client must see it, and what each client saw is checked:
// its rows equal the SQL truth, and per row the `version` counter (incremented by every
// update) never repeats or skips.
//
// Run under its own throwaway cluster (`just chaos`, or the fast subset in scripts/test):
// the Postgres restart fault needs VOLT_TEST_PG_DATA_DIR and VOLT_TEST_PG_CTL, which
// volt-test-cluster sets.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { setTimeout as delay } from 'node:timers/promises';
import { test } from 'node:test';
import { promisify } from 'node:util';

import { isChangeMessage, isControlMessage, Shape, ShapeStream } from '@electric-sql/client';
import pg from 'pg';

import { Cleanup, createTestDb, databaseUrl, guarded, startVolt, voltBin, waitFor } from '../../support/volt.js';

const execFileP = promisify(execFile);

/** Tables written by the load; identical columns, different shapes. */
export const TABLES = ['accounts', 'orders', 'events'];
/** Per table, the `grp` of its marker row (id 0): one every shape on that table includes. */
const MARKER_GRP = { accounts: 1, orders: 0, events: 0 };
const INITIAL_ROWS = 60;
const BIG_ROWS = Number(process.env.CHAOS_BIG_ROWS ?? 100_000);

/** The subscribers: distinct shapes, and two clients sharing one. */
export const CLIENTS = [
  { name: 'accounts', params: { table: 'accounts' } },
  { name: 'accounts (2nd client)', params: { table: 'accounts' } },
  { name: 'accounts grp=1', params: { table: 'accounts', where: 'grp = 1' } },
  { name: 'orders grp in (0,2)', params: { table: 'orders', where: 'grp IN (0, 2)' } },
  { name: 'orders (id,version,t)', params: { table: 'orders', columns: ['id', 'version', 't'] } },
  { name: 'events grp<>3', params: { table: 'events', where: 'grp <> 3' } },
];

const SETUP = [
  ...TABLES.map(
    (t) => `
    CREATE TABLE ${t} (id serial PRIMARY KEY, grp int NOT NULL, version int NOT NULL, n int, t text, b bool);
    INSERT INTO ${t} (id, grp, version, n, t, b) VALUES (0, ${MARKER_GRP[t]}, 1, 0, 'marker', false);
    INSERT INTO ${t} (grp, version, n, t, b)
      SELECT i % 4, 1, i, 'row ' || i, i % 2 = 0 FROM generate_series(1, ${INITIAL_ROWS}) i;`,
  ),
].join('\n');

const BIG_SETUP = `
  CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL);
  INSERT INTO big SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, ${BIG_ROWS}) i;`;

// ---------------------------------------------------------------------------
// Randomness that a seed replays

export function seededRandom(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
  };
}

export function chaosSeed() {
  const env = process.env.CHAOS_SEED;
  if (env != null && env !== '') {
    const seed = Number(env);
    if (!Number.isInteger(seed)) throw new Error(`CHAOS_SEED must be an integer, got ${env}`);
    return seed;
  }
  return Math.floor(Math.random() * 2 ** 31);
}

// ---------------------------------------------------------------------------
// SQL that survives a Postgres restart

const CONNECTION_ERRORS = /terminat|not queryable|ECONNREFUSED|ECONNRESET|Connection terminated|not yet accepting|shutting down|starting up|closed|EPIPE|admin_shutdown|57P0/i;

function isConnectionError(err) {
  return CONNECTION_ERRORS.test(`${err?.code ?? ''} ${err?.message ?? err}`);
}

/** A small pool whose queries retry on connection errors (the server may be restarting). */
export class Sql {
  constructor(url) {
    this.pool = new pg.Pool({ connectionString: url, max: 3 });
    // Idle clients die with the server: pg reports it here, not to a query.
    this.pool.on('error', () => {});
  }
  async query(text, params, { timeout = 60_000 } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      try {
        return await this.pool.query(text, params);
      } catch (err) {
        if (!isConnectionError(err) || Date.now() > deadline) throw err;
        await delay(100); // retry backoff while the server restarts
      }
    }
  }
  /** Runs `fn(client)` in a transaction, retrying it whole on connection errors. */
  async transaction(fn, { timeout = 60_000 } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      let client;
      try {
        client = await this.pool.connect();
        await client.query('BEGIN');
        const out = await fn(client);
        await client.query('COMMIT');
        client.release();
        return out;
      } catch (err) {
        client?.release(true);
        if (!isConnectionError(err) || Date.now() > deadline) throw err;
        await delay(100);
      }
    }
  }
  end() {
    return this.pool.end().catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// The write load

/**
 * Multi-row transactions of inserts, updates (`version = version + 1`) and deletes over
 * TABLES, one after another, never touching the marker rows (id 0) or `grp`. Survives
 * connection loss: it reconnects and reloads the live ids (a commit whose outcome was lost
 * with the connection may or may not have happened).
 */
export class Writer {
  constructor(url, rng, { intervalMs = Number(process.env.CHAOS_WRITE_INTERVAL_MS ?? 5) } = {}) {
    this.url = url;
    this.rng = rng;
    this.intervalMs = intervalMs;
    this.committed = 0;
    this.failures = 0;
    this.lastError = undefined;
    this.ids = Object.fromEntries(TABLES.map((t) => [t, []]));
    this.running = undefined;
  }

  start() {
    if (this.running) return;
    this.stopping = false;
    this.running = this.#loop().catch((err) => {
      this.fatal = err;
    });
  }

  async stop() {
    this.stopping = true;
    await this.running;
    this.running = undefined;
    if (this.fatal) throw new Error(`the writer failed: ${this.fatal.message}`);
  }

  /** Waits until `n` more transactions have committed. */
  async waitCommits(n, { timeout = 60_000, label = `${n} more writer transactions` } = {}) {
    const target = this.committed + n;
    await waitFor(() => this.committed >= target, {
      timeout,
      interval: 10,
      failFast: () => this.fatal && new Error(`the writer failed: ${this.fatal.message}`),
      label: () => `${label} (${this.failures} failed attempts, last error: ${this.lastError?.message})`,
    });
  }

  async #connect() {
    const client = new pg.Client({ connectionString: this.url });
    client.on('error', () => {});
    await client.connect();
    for (const t of TABLES) {
      const { rows } = await client.query(`SELECT id FROM ${t} WHERE id > 0`);
      this.ids[t] = rows.map((r) => r.id);
    }
    this.client = client;
  }

  async #loop() {
    while (!this.stopping) {
      try {
        if (!this.client) await this.#connect();
        await this.#transaction();
        this.committed += 1;
      } catch (err) {
        this.failures += 1;
        this.lastError = err;
        const client = this.client;
        this.client = undefined;
        await client?.end().catch(() => {});
        if (!isConnectionError(err)) throw err;
        await delay(50); // reconnect backoff while the server restarts
        continue;
      }
      // Pacing, so that a debug volt on a shared machine keeps up with the load.
      if (this.intervalMs > 0) await delay(this.intervalMs);
    }
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => {});
  }

  async #transaction() {
    const { rng, client } = this;
    const ids = Object.fromEntries(TABLES.map((t) => [t, [...this.ids[t]]]));
    await client.query('BEGIN');
    try {
      // Now and then a transaction larger than one replication fragment (100 changes),
      // so that faults also land in the middle of one.
      if (rng.next() < 0.03) {
        this.bulk = true;
        const t = rng.pick(TABLES);
        await client.query(`UPDATE ${t} SET version = version + 1, n = n + 1 WHERE id > 0`);
        await client.query(
          `INSERT INTO ${t} (grp, version, n, t, b) SELECT i % 4, 1, i, 'bulk', true FROM generate_series(1, 120) i`,
        );
        await client.query(`DELETE FROM ${t} WHERE id IN (SELECT id FROM ${t} WHERE id > 0 ORDER BY random() LIMIT 120)`);
      }
      const ops = rng.int(1, 4);
      for (let i = 0; i < ops; i++) {
        const t = rng.pick(TABLES);
        const live = ids[t];
        const roll = rng.next();
        const insertBias = live.length < 40 ? 0.3 : live.length > 120 ? -0.2 : 0;
        if (live.length === 0 || roll < 0.3 + insertBias) {
          const { rows } = await client.query(
            `INSERT INTO ${t} (grp, version, n, t, b) VALUES ($1, 1, $2, $3, $4) RETURNING id`,
            [rng.int(0, 3), rng.int(0, 1000), `new ${rng.int(0, 1e6)} 'q' ü`, rng.next() < 0.5],
          );
          live.push(rows[0].id);
        } else if (roll < 0.8) {
          // Several rows at once, or one row (sometimes twice in the same transaction).
          const many = rng.next() < 0.25;
          const targets = many
            ? [...new Set(Array.from({ length: rng.int(2, 5) }, () => rng.pick(live)))]
            : [rng.pick(live)];
          const repeat = !many && rng.next() < 0.2 ? 2 : 1;
          for (let r = 0; r < repeat; r++) {
            await client.query(
              `UPDATE ${t} SET version = version + 1, n = $2, t = $3, b = NOT b WHERE id = ANY($1)`,
              [targets, rng.int(0, 1000), `upd ${rng.int(0, 1e6)}`],
            );
          }
        } else {
          const idx = rng.int(0, live.length - 1);
          const [id] = live.splice(idx, 1);
          await client.query(`DELETE FROM ${t} WHERE id = $1`, [id]);
        }
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
    this.ids = ids;
    if (this.bulk) {
      // A bulk transaction changed ids behind the model's back: reload them.
      this.bulk = false;
      for (const t of TABLES) this.ids[t] = (await client.query(`SELECT id FROM ${t} WHERE id > 0`)).rows.map((r) => r.id);
    }
  }
}

// ---------------------------------------------------------------------------
// Subscribers and what they saw

/**
 * Checks the stream of one client op by op: per key, the `version` of each update must be
 * the previous one plus one (a repeat is a duplicated operation, a gap a lost one), an
 * insert must be for a key the client does not hold, a delete for one it does. A
 * `must-refetch` starts over: the refetched snapshot holds each row at its current version.
 */
class VersionChecker {
  constructor(name) {
    this.name = name;
    this.live = new Map();
    this.deleted = new Set();
    this.lost = 0;
    this.dup = 0;
    this.refetches = 0;
    this.ops = 0;
    this.problems = [];
  }
  #problem(kind, text) {
    if (kind === 'lost') this.lost += 1;
    else this.dup += 1;
    if (this.problems.length < 20) this.problems.push(`${this.name}: ${kind}: ${text}`);
  }
  refetch() {
    this.refetches += 1;
    this.live.clear();
    this.deleted.clear();
  }
  change(msg) {
    this.ops += 1;
    const { key } = msg;
    const op = msg.headers.operation;
    const at = `(lsn ${msg.headers.lsn ?? 'snapshot'}, op ${msg.headers.op_position ?? '-'})`;
    const version = msg.value?.version;
    if (op === 'insert') {
      if (this.live.has(key)) this.#problem('duplicated', `insert of ${key} v${version}, already held at v${this.live.get(key)} ${at}`);
      else if (this.deleted.has(key)) this.#problem('duplicated', `insert of ${key} v${version} after its delete ${at}`);
      this.live.set(key, version);
    } else if (op === 'update') {
      const last = this.live.get(key);
      if (last === undefined) {
        this.#problem('lost', `update of ${key} to v${version}, never inserted ${at}`);
      } else if (version <= last) {
        this.#problem('duplicated', `update of ${key} to v${version} after v${last} ${at}`);
      } else if (version > last + 1) {
        this.lost += version - last - 2; // counted below once more
        this.#problem('lost', `update of ${key} from v${last} to v${version} ${at}`);
      }
      if (version !== undefined && (last === undefined || version > last)) this.live.set(key, version);
    } else if (op === 'delete') {
      if (!this.live.has(key)) {
        this.#problem('duplicated', `delete of ${key}, ${this.deleted.has(key) ? 'already deleted' : 'not held'} ${at}`);
      }
      this.live.delete(key);
      this.deleted.add(key);
    }
  }
}

function describeError(err) {
  const parts = [err?.message ?? String(err)];
  if (err?.status) parts.push(`status ${err.status}`);
  if (err?.json) parts.push(`body ${JSON.stringify(err.json)}`);
  else if (err?.text) parts.push(`body ${err.text}`);
  return parts.join('; ');
}

export function keyOf(table, id) {
  return `"public"."${table}"/"${id}"`;
}

/** A real ShapeStream + Shape, with a VersionChecker on every message. */
class Subscriber {
  constructor(volt, { name, params, marker = true }) {
    this.name = name;
    this.params = params;
    this.table = params.table;
    this.marker = marker;
    this.errors = [];
    this.checker = new VersionChecker(name);
    this.aborter = new AbortController();
    this.stream = new ShapeStream({
      url: `${volt.url}/v1/shape`,
      params,
      signal: this.aborter.signal,
      // A 4xx other than 409 ends the stream: in a chaos test that is a finding.
      onError: (err) => {
        this.errors.push(err);
      },
    });
    this.stream.subscribe(
      (batch) => {
        for (const msg of batch) {
          if (isChangeMessage(msg)) this.checker.change(msg);
          else if (isControlMessage(msg) && msg.headers.control === 'must-refetch') this.checker.refetch();
        }
      },
      (err) => this.errors.push(err),
    );
    this.shape = new Shape(this.stream);
  }
  get handle() {
    return this.stream.shapeHandle;
  }
  failure() {
    return this.errors.length ? new Error(`client "${this.name}" failed: ${describeError(this.errors[0])}`) : undefined;
  }
  close() {
    this.shape.unsubscribeAll();
    this.stream.unsubscribeAll();
    this.aborter.abort();
  }
}

// ---------------------------------------------------------------------------
// volt's admin API

async function getJson(volt, path, { method = 'GET' } = {}) {
  const res = await fetch(`${volt.url}${path}`, { method, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: res.status, body };
}

export async function isActive(volt) {
  const { status, body } = await getJson(volt, '/v1/health');
  return status === 200 && body?.status === 'active';
}

export async function treeNodes(volt) {
  const { status, body } = await getJson(volt, '/v1/admin/tree');
  if (status !== 200) throw new Error(`admin tree: ${status} ${JSON.stringify(body)}`);
  const nodes = [];
  const visit = (n) => {
    nodes.push(n);
    for (const c of n.children ?? []) visit(c);
  };
  visit(body);
  return nodes;
}

export async function killActor(volt, query) {
  return getJson(volt, `/v1/admin/kill?${query}`, { method: 'POST' });
}

// ---------------------------------------------------------------------------
// Faults

async function liveNodeOf(volt, kind) {
  return (await treeNodes(volt)).find((n) => n.kind === kind && n.status === 'running');
}

/** Kill (or stop) an actor of `kind`; recovered once that actor is gone, another of its kind runs and volt is active. */
function actorFault(kind, { restarted = true } = {}) {
  return {
    name: `kill ${kind}`,
    async inject(env, rng, { burst = false } = {}) {
      const mode = rng && rng.next() < 0.25 ? 'stop' : 'kill';
      const res = await killActor(env.volt, `kind=${kind}&mode=${mode}`);
      // In a burst the previous fault may have taken this actor down already.
      if (burst && res.status === 404) return undefined;
      assert.equal(res.status, 202, `kill ${kind}: ${res.status} ${JSON.stringify(res.body)}`);
      const killedId = res.body.id;
      return {
        detail: mode,
        refetchAllowed: new Set(),
        async recovered() {
          const nodes = await treeNodes(env.volt);
          if (nodes.some((n) => n.id === killedId)) return false;
          if (restarted && !nodes.some((n) => n.kind === kind && n.status === 'running')) return false;
          return isActive(env.volt);
        },
      };
    },
  };
}

/** Recovered once a new ReplicationClient streams and volt is active. */
async function replicationRestarted(env) {
  const before = (await liveNodeOf(env.volt, 'ReplicationClient'))?.id;
  return async () => {
    const now = await liveNodeOf(env.volt, 'ReplicationClient');
    return now && now.id !== before && isActive(env.volt);
  };
}

async function pgCtl(args) {
  const ctl = process.env.VOLT_TEST_PG_CTL;
  const dataDir = process.env.VOLT_TEST_PG_DATA_DIR;
  const user = process.env.VOLT_TEST_PG_OS_USER;
  const [cmd, argv] = user ? ['runuser', ['-u', user, '--', ctl, ...args]] : [ctl, args];
  await execFileP(cmd, argv, { cwd: dataDir, env: { ...process.env, LC_ALL: 'C', LANG: 'C' }, timeout: 120_000 });
}

export function canRestartPostgres() {
  return Boolean(process.env.VOLT_TEST_PG_CTL && process.env.VOLT_TEST_PG_DATA_DIR);
}

export const FAULTS = {
  ReplicationClient: actorFault('ReplicationClient'),
  ConnectionManager: actorFault('ConnectionManager'),
  ShapeLogCollector: actorFault('ShapeLogCollector'),
  ShapeCache: actorFault('ShapeCache'),
  StatusMonitor: actorFault('StatusMonitor'),
  // Beyond the issue's list: the rest of the shape subsystem.
  PublicationManager: actorFault('PublicationManager'),
  ShapeDbWriter: actorFault('ShapeDbWriter'),
  ConsumerSupervisor: actorFault('ConsumerSupervisor'),
  Consumer: {
    name: 'kill Consumer',
    async inject(env, rng, { burst = false } = {}) {
      const candidates = env.subscribers.filter((s) => s.marker);
      const victim = rng ? rng.pick(candidates) : candidates[2];
      const handle = victim.handle;
      const res = await killActor(env.volt, `kind=Consumer&shape=${encodeURIComponent(handle)}`);
      if (burst && res.status === 404) return undefined;
      assert.equal(res.status, 202, `kill Consumer:${handle}: ${res.status} ${JSON.stringify(res.body)}`);
      const sharing = env.subscribers.filter((s) => s.handle === handle);
      return {
        detail: `shape of "${victim.name}"`,
        refetchAllowed: new Set(sharing.map((s) => s.name)),
        async recovered() {
          const nodes = await treeNodes(env.volt);
          return !nodes.some((n) => n.id === res.body.id) && isActive(env.volt);
        },
      };
    },
  },
  Snapshotter: {
    name: 'kill Snapshotter mid-snapshot',
    needsBig: true,
    // It creates a shape and waits for its snapshot to start: not for bursts.
    noBurst: true,
    async inject(env) {
      env.bigSeq = (env.bigSeq ?? 0) + 1;
      // A where clause no other shape has: a new shape, so a new snapshot.
      const sub = env.subscribe({ name: `big #${env.bigSeq}`, params: { table: 'big', where: `id > -${env.bigSeq}` }, marker: false });
      const res = await waitFor(
        async () => {
          const r = await killActor(env.volt, 'kind=Snapshotter&mode=kill');
          return r.status === 202 && r;
        },
        {
          timeout: 30_000,
          interval: 5,
          label: 'a running Snapshotter to kill',
          failFast: () => sub.stream.isUpToDate && new Error('the snapshot finished before it could be killed (raise CHAOS_BIG_ROWS)'),
        },
      );
      return {
        detail: `${res.body.name}`,
        refetchAllowed: new Set([sub.name]),
        temporary: [sub],
        async recovered() {
          const nodes = await treeNodes(env.volt);
          return !nodes.some((n) => n.id === res.body.id) && isActive(env.volt);
        },
      };
    },
  },
  walsender: {
    name: 'terminate walsender',
    async inject(env, _rng, { burst = false } = {}) {
      const recovered = await replicationRestarted(env);
      const { rows } = await env.adminSql.query(
        `SELECT pg_terminate_backend(a.pid) AS ok
           FROM pg_stat_activity a JOIN pg_replication_slots s ON s.active_pid = a.pid
          WHERE s.slot_name = $1 AND a.backend_type = 'walsender'`,
        [env.db.slotName],
      );
      if (burst && rows.length === 0) return undefined;
      assert.equal(rows.length, 1, "volt's walsender was running");
      return { detail: 'pg_terminate_backend', refetchAllowed: new Set(), recovered };
    },
  },
  postgres: {
    name: 'restart Postgres',
    needsPgCtl: true,
    async inject(env) {
      const recovered = await replicationRestarted(env);
      const dataDir = process.env.VOLT_TEST_PG_DATA_DIR;
      const logFile = process.env.VOLT_TEST_PG_LOG_FILE ?? `${dataDir}/postgres.log`;
      await pgCtl(['-w', '-t', '60', '-D', dataDir, '-m', 'fast', 'stop']);
      await pgCtl(['-w', '-t', '60', '-D', dataDir, '-l', logFile, 'start']);
      return { detail: 'pg_ctl -m fast', refetchAllowed: new Set(), recovered };
    },
  },
};

// ---------------------------------------------------------------------------
// One environment: a database, a volt, the writer and the subscribers

export class ChaosEnv {
  constructor({ db, volt, rng, big }) {
    this.db = db;
    this.volt = volt;
    this.rng = rng;
    this.big = big;
    this.sql = new Sql(db.url);
    this.adminSql = new Sql(databaseUrl());
    this.writer = new Writer(db.url, rng);
    this.subscribers = [];
    this.results = [];
  }

  subscribe(spec) {
    const sub = new Subscriber(this.volt, spec);
    this.subscribers.push(sub);
    return sub;
  }

  failFast() {
    for (const s of this.subscribers) {
      const f = s.failure();
      if (f) return f;
    }
    if (this.volt.exited) return new Error(`volt exited (code ${this.volt.exited.code}, signal ${this.volt.exited.signal})`);
    return undefined;
  }

  async close() {
    await this.writer.stop().catch(() => {});
    for (const s of this.subscribers) s.close();
    await this.sql.end();
    await this.adminSql.end();
  }

  /** SQL truth for a subscriber: its rows, its columns, by id. */
  async truth(sub) {
    const cols = sub.params.columns?.join(', ') ?? '*';
    const where = sub.params.where ? `WHERE ${sub.params.where}` : '';
    const { rows } = await this.sql.query(`SELECT ${cols} FROM ${sub.table} ${where} ORDER BY id`);
    return rows;
  }

  /**
   * Stops the writer, writes the marker (one more update of every marker row), waits until
   * every subscriber holds it, then compares each with the SQL truth. Returns the ms from
   * the marker's commit until every client saw it.
   */
  async settle({ timeout = 90_000 } = {}) {
    await this.writer.stop();
    const marker = await this.sql.transaction(async (c) => {
      const out = {};
      for (const t of TABLES) {
        const { rows } = await c.query(`UPDATE ${t} SET version = version + 1 WHERE id = 0 RETURNING version`);
        out[t] = rows[0].version;
      }
      return out;
    });
    const markedAt = Date.now();
    const truths = new Map();
    for (const s of this.subscribers) truths.set(s, await this.truth(s));
    await waitFor(
      () =>
        this.subscribers.every((s) => {
          if (s.marker) return (s.checker.live.get(keyOf(s.table, 0)) ?? -1) >= marker[s.table];
          // No marker row (the static big table): caught up once it holds every row.
          return s.stream.isUpToDate && s.shape.currentRows.length === truths.get(s).length;
        }),
      {
        timeout,
        interval: 20,
        failFast: () => this.failFast(),
        label: () =>
          `every client to see the marker ${JSON.stringify(marker)}; behind: ${this.subscribers
            .filter((s) => (s.marker ? (s.checker.live.get(keyOf(s.table, 0)) ?? -1) < marker[s.table] : !s.stream.isUpToDate))
            .map((s) => `${s.name} (handle ${s.handle}, at ${s.marker ? s.checker.live.get(keyOf(s.table, 0)) : s.shape.currentRows.length})`)
            .join(', ')}`,
      },
    );
    const caughtUpMs = Date.now() - markedAt;
    for (const s of this.subscribers) this.compare(s, truths.get(s));
    return caughtUpMs;
  }

  /** The client's rows (the real Shape's materialisation) must equal the truth; differences count as lost or duplicated. */
  compare(sub, truth) {
    const want = new Map(truth.map((r) => [r.id, r]));
    const got = new Map(sub.shape.currentRows.map((r) => [r.id, r]));
    const checker = sub.checker;
    const diffs = [];
    for (const [id, row] of want) {
      const mine = got.get(id);
      const key = keyOf(sub.table, id);
      if (!mine) {
        diffs.push(`missing ${key} (v${row.version})`);
        checker.lost += 1;
      } else if (JSON.stringify(mine, Object.keys(row).sort()) !== JSON.stringify(row, Object.keys(row).sort())) {
        diffs.push(`${key}: client ${JSON.stringify(mine)} != sql ${JSON.stringify(row)}`);
        if (row.version !== undefined && mine.version > row.version) checker.dup += 1;
        else checker.lost += 1;
      }
    }
    for (const [id] of got) {
      if (!want.has(id)) {
        diffs.push(`extra ${keyOf(sub.table, id)}`);
        checker.lost += 1; // a delete it never saw
      }
    }
    if (diffs.length) checker.problems.push(`${sub.name}: rows differ from SQL: ${diffs.slice(0, 5).join('; ')}${diffs.length > 5 ? ` (+${diffs.length - 5})` : ''}`);
  }

  /**
   * One fault under load: `warmup` writer transactions, the fault, recovery (volt active,
   * the fault's own condition), `after` more transactions, then settle and check. Returns
   * the table row; throws (after recording it) if the checks fail.
   */
  async runFault(fault, opts = {}) {
    return this.runFaults([fault], opts);
  }

  /**
   * Several faults injected back to back (a burst: none waits for volt to recover from
   * the one before; a fault whose actor is already gone is left out), then checked as one.
   */
  async runFaults(faults, { rng, warmup = 20, after = 20, recoveryTimeout = 90_000 } = {}) {
    const before = new Map(this.subscribers.map((s) => [s, { lost: s.checker.lost, dup: s.checker.dup, refetches: s.checker.refetches, problems: s.checker.problems.length }]));
    this.writer.start();
    await this.writer.waitCommits(warmup);
    const t0 = Date.now();
    const burst = faults.length > 1;
    const injected = [];
    const absent = [];
    for (const fault of faults) {
      const done = await fault.inject(this, rng, { burst });
      if (done) injected.push({ fault, ...done });
      else absent.push(fault.name);
    }
    const name = injected.map((i) => i.fault.name).join(' + ') || 'nothing';
    const detail = [...injected.map((i) => i.detail), ...absent.map((n) => `not running: ${n}`)].join(', ');
    const refetchAllowed = new Set(injected.flatMap((i) => [...i.refetchAllowed]));
    await waitFor(
      async () => {
        for (const i of injected) if (!(await i.recovered())) return false;
        return isActive(this.volt);
      },
      {
        timeout: recoveryTimeout,
        interval: 25,
        failFast: () => this.failFast(),
        label: `volt to recover from "${name}" (${detail})`,
      },
    );
    const activeMs = Date.now() - t0;
    await this.writer.waitCommits(after, { label: `${after} writer transactions after "${name}"` });
    const caughtUpMs = await this.settle();

    const row = { fault: burst ? `burst: ${name}` : name, detail, activeMs, caughtUpMs, refetches: 0, lost: 0, dup: 0, unexpected: [], problems: [] };
    for (const s of this.subscribers) {
      const b = before.get(s) ?? { lost: 0, dup: 0, refetches: 0, problems: 0 };
      const c = s.checker;
      row.lost += c.lost - b.lost;
      row.dup += c.dup - b.dup;
      const refetches = c.refetches - b.refetches;
      row.refetches += refetches;
      if (refetches > 0 && !refetchAllowed.has(s.name)) row.unexpected.push(`${s.name} (${refetches})`);
      row.problems.push(...c.problems.slice(b.problems));
    }
    this.results.push(row);
    for (const s of injected.flatMap((i) => i.temporary ?? [])) {
      s.close();
      this.subscribers.splice(this.subscribers.indexOf(s), 1);
    }
    return row;
  }
}

/** Fails the test with everything a row knows when the fault broke something. */
export function assertClean(row) {
  const why = [
    row.lost ? `${row.lost} lost operations` : '',
    row.dup ? `${row.dup} duplicated operations` : '',
    row.unexpected.length ? `409 must-refetch where the fault allows none: ${row.unexpected.join(', ')}` : '',
  ].filter(Boolean);
  if (why.length || row.problems.length) {
    assert.fail(`"${row.fault}" (${row.detail}): ${why.join('; ') || 'rows differ'}\n  ${row.problems.join('\n  ')}`);
  }
}

export function formatTable(rows) {
  const header = ['fault', 'detail', 'recovery ms', 'to active ms', 'catch-up ms', '409s', 'lost', 'dup'];
  const lines = rows.map((r) => [
    r.fault,
    r.detail ?? '',
    String(r.activeMs + r.caughtUpMs),
    String(r.activeMs),
    String(r.caughtUpMs),
    String(r.refetches),
    String(r.lost),
    String(r.dup),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [fmt(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...lines.map(fmt)].join('\n');
}

/** Where the rows of every test in this process go; printed by `printResults`. */
export const RESULTS = [];

export function printResults(title) {
  if (!RESULTS.length) return;
  process.stdout.write(`\n${title}\n${formatTable(RESULTS)}\n`);
}

/**
 * Declares a chaos test: a fresh database (the load's tables, and the big table if
 * `big`), a volt with integration testing and a short long-poll, the subscribers synced.
 */
export function chaosTest(name, { big = false, timeout = 300_000, skip, todo, seed } = {}, fn) {
  test(name, { timeout, skip, todo }, async () => {
    databaseUrl();
    voltBin();
    const cleanup = new Cleanup();
    let volt;
    await guarded(`chaos: ${name}`, cleanup, () => volt, async () => {
      const db = await createTestDb(`chaos_${name}`);
      // The test's own connection dies with a Postgres restart: nothing to report.
      db.client.on('error', () => {});
      cleanup.defer(() => db.drop());
      await db.client.query(SETUP);
      if (big) await db.client.query(BIG_SETUP);
      volt = await startVolt({
        databaseUrl: db.url,
        streamId: db.streamId,
        env: {
          ELECTRIC_ENABLE_INTEGRATION_TESTING: 'true',
          ELECTRIC_LONG_POLL_TIMEOUT: '1000',
        },
      });
      cleanup.defer(() => volt.stop());
      // The writer and the fault choices draw from separate sequences, so that a seed
      // replays the same faults whatever the timing does to the writer.
      const env = new ChaosEnv({ db, volt, rng: seededRandom((seed ?? 1) ^ 0x5bd1e995), big });
      env.faultRng = seededRandom(seed ?? 1);
      cleanup.defer(() => env.close());
      for (const spec of CLIENTS) env.subscribe(spec);
      await env.settle();
      for (const s of env.subscribers) assert.deepEqual(s.checker.problems, [], 'the initial sync is clean');
      await fn(env);
    });
  });
}
