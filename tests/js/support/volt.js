// Test harness for driving a real volt binary against a real Postgres.
//
// Every test gets its own database (and therefore its own publication), its
// own replication stream id (and therefore its own slot), its own storage dir
// and its own volt process on a free port. Everything is torn down in
// `finally`, even when the test fails.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import pg from 'pg';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(here, '..', '..', '..');

/** Long-poll timeout handed to volt, in ms; tests that wait for it use this. */
export const LONG_POLL_TIMEOUT_MS = 3000;

const SHOW_LOGS = process.env.VOLT_TEST_LOGS === '1';
const MAX_LOG_BYTES = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Environment

export function databaseUrl() {
  const url = process.env.VOLT_TEST_DATABASE_URL;
  if (!url) {
    throw new Error(
      'VOLT_TEST_DATABASE_URL is not set: run through ./scripts/test ' +
        '(it starts a throwaway Postgres cluster and points the tests at it)',
    );
  }
  return url;
}

export function voltBin() {
  const bin = process.env.VOLT_BIN || path.join(REPO_ROOT, 'target', 'debug', 'volt');
  if (!existsSync(bin)) {
    throw new Error(
      `volt binary not found at ${bin}: build it with \`cargo build -p volt\` ` +
        'or point VOLT_BIN at it (./scripts/test does both)',
    );
  }
  return bin;
}

// ---------------------------------------------------------------------------
// Waiting

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `predicate` (sync or async) every `interval` ms until it returns a
 * truthy value, which is returned. Throws once `timeout` ms have passed.
 * A predicate that throws counts as "not yet"; its last error is reported.
 * `failFast`, if given, is called on every round and may return an Error (or
 * message) that aborts the wait at once (e.g. an error seen by a ShapeStream).
 * `label` may be a function, called for the message when the wait fails.
 */
export async function waitFor(predicate, { timeout = 10_000, interval = 25, label = 'condition', failFast } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    const fatal = failFast?.();
    if (fatal) {
      const err = fatal instanceof Error ? fatal : new Error(String(fatal));
      err.message = `while waiting for ${describe(label)}: ${err.message}`;
      throw err;
    }
    try {
      const value = await predicate();
      if (value) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const why = lastError ? ` (last error: ${lastError.message ?? lastError})` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${describe(label)}${why}`);
    }
    await pause(interval);
  }
}

const describe = (label) => (typeof label === 'function' ? label() : label);

/** Rejects if `promise` does not settle within `timeout` ms. */
export async function withTimeout(promise, timeout, label) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms waiting for ${label}`)), timeout);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// Databases

let dbCounter = 0;

function uniqueSuffix() {
  dbCounter += 1;
  return `${process.pid.toString(36)}${dbCounter.toString(36)}${randomBytes(4).toString('hex')}`;
}

function quoteIdent(name) {
  return `"${name.replaceAll('"', '""')}"`;
}

function withDatabase(url, dbName) {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(dbName)}`;
  return u.toString();
}

async function adminQuery(fn) {
  const admin = new pg.Client({ connectionString: databaseUrl() });
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.end().catch(() => {});
  }
}

/**
 * Creates a fresh database. `name` is a readable hint; a unique suffix is
 * appended and the result is lowercased and cut to Postgres' 63 bytes.
 * Returns `{ name, url, client, streamId, slotName, connect(), drop() }`.
 */
export async function createTestDb(name = 'db') {
  const base = databaseUrl();
  const suffix = uniqueSuffix();
  const hint = name.toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
  const dbName = `vjs_${hint}`.slice(0, 63 - suffix.length - 1) + `_${suffix}`;
  const streamId = `js_${suffix}`;
  const slotName = `electric_slot_${streamId}`;

  await adminQuery((admin) => admin.query(`CREATE DATABASE ${quoteIdent(dbName)}`));

  const url = withDatabase(base, dbName);
  const extraClients = [];
  const connect = async () => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    extraClients.push(c);
    return c;
  };

  let client;
  try {
    client = new pg.Client({ connectionString: url });
    await client.connect();
  } catch (err) {
    await dropDatabase(dbName, slotName).catch(() => {});
    throw err;
  }

  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    for (const c of [client, ...extraClients]) await c.end().catch(() => {});
    await dropDatabase(dbName, slotName);
  };

  return { name: dbName, url, client, streamId, slotName, connect, drop };
}

async function dropDatabase(dbName, slotName, { timeout = 15_000 } = {}) {
  await adminQuery(async (admin) => {
    // The replication slot lives outside the database: terminate whatever
    // walsender still holds it, wait for it to go inactive, then drop it.
    await waitFor(
      async () => {
        const { rows } = await admin.query(
          'SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1',
          [slotName],
        );
        if (rows.length === 0) return true;
        if (rows[0].active_pid != null) {
          await admin.query('SELECT pg_terminate_backend($1)', [rows[0].active_pid]);
          return false;
        }
        // May race with a walsender re-acquiring the slot: then try again.
        await admin.query(
          'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1',
          [slotName],
        );
        return false;
      },
      { timeout, label: `replication slot ${slotName} to be dropped` },
    );

    await waitFor(
      async () => {
        await admin.query(
          'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
          [dbName],
        );
        await admin.query(`DROP DATABASE IF EXISTS ${quoteIdent(dbName)} WITH (FORCE)`);
        return true;
      },
      { timeout, label: `database ${dbName} to be dropped` },
    );
  });
}

// ---------------------------------------------------------------------------
// volt processes

const liveChildren = new Set();
// Never leave a volt behind, whatever way this test process ends.
process.on('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

class LogBuffer {
  constructor() {
    this.chunks = [];
    this.bytes = 0;
    this.dropped = 0;
  }
  push(chunk) {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes > MAX_LOG_BYTES && this.chunks.length > 1) {
      const old = this.chunks.shift();
      this.bytes -= old.length;
      this.dropped += old.length;
    }
  }
  text() {
    const head = this.dropped ? `[... ${this.dropped} earlier bytes dropped ...]\n` : '';
    return head + Buffer.concat(this.chunks).toString('utf8');
  }
}

/**
 * Spawns volt on a free port against `databaseUrl` and waits until
 * `/v1/health` reports `{"status":"active"}` (or, with `ready: 'listening'`,
 * until it answers at all: for a volt that cannot become active).
 * Returns `{ url, port, storageDir, logs(), printLogs(), exited, stop() }`.
 */
export async function startVolt({ databaseUrl: dbUrl, streamId, secret, env = {}, healthTimeout = 30_000, ready = 'active' }) {
  const bin = voltBin();
  const port = await freePort();
  const storageDir = await mkdtemp(path.join(os.tmpdir(), 'volt-js-'));

  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('ELECTRIC_') || k === 'DATABASE_URL') continue;
    childEnv[k] = v;
  }
  Object.assign(childEnv, {
    DATABASE_URL: dbUrl,
    ELECTRIC_PORT: String(port),
    ELECTRIC_STORAGE_DIR: storageDir,
    ELECTRIC_REPLICATION_STREAM_ID: streamId,
    ELECTRIC_LONG_POLL_TIMEOUT: String(LONG_POLL_TIMEOUT_MS),
    ELECTRIC_LOG_LEVEL: 'info',
    // Logs are captured into a buffer and printed inside the test report.
    NO_COLOR: '1',
  });
  if (secret != null) childEnv.ELECTRIC_SECRET = secret;
  else childEnv.ELECTRIC_INSECURE = 'true';
  Object.assign(childEnv, env);

  const logs = new LogBuffer();
  const child = spawn(bin, [], { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  liveChildren.add(child);
  child.stdout.on('data', (c) => logs.push(c));
  child.stderr.on('data', (c) => logs.push(c));

  const state = { exited: false, code: null, signal: null, spawnError: null };
  const exitPromise = new Promise((resolve) => {
    child.once('error', (err) => {
      state.spawnError = err;
      state.exited = true;
      liveChildren.delete(child);
      resolve();
    });
    child.once('exit', (code, signal) => {
      Object.assign(state, { exited: true, code, signal });
      liveChildren.delete(child);
      resolve();
    });
  });

  const url = `http://127.0.0.1:${port}`;
  let printed = false;
  const volt = {
    url,
    port,
    storageDir,
    logs: () => logs.text(),
    printLogs(reason = 'logs') {
      if (printed) return;
      printed = true;
      process.stderr.write(`\n----- volt ${reason} (${url}, stream ${streamId}) -----\n${logs.text()}\n----- end of volt logs -----\n`);
    },
    /** Set once the process has exited; `{ code, signal }`. */
    get exited() {
      return state.exited ? { code: state.code, signal: state.signal, error: state.spawnError } : null;
    },
    async stop({ timeout = 10_000 } = {}) {
      if (!state.exited) {
        child.kill('SIGTERM');
        const timer = new Promise((resolve) => setTimeout(resolve, timeout).unref());
        await Promise.race([exitPromise, timer]);
        if (!state.exited) {
          logs.push(Buffer.from(`[harness] volt did not exit within ${timeout} ms of SIGTERM; sending SIGKILL\n`));
          child.kill('SIGKILL');
          await exitPromise;
        }
      }
      await rm(storageDir, { recursive: true, force: true });
    },
  };

  try {
    await waitFor(
      async () => {
        const res = await fetch(`${url}/v1/health`, { signal: AbortSignal.timeout(1000) });
        const body = await res.text();
        if (ready === 'listening') return true;
        return res.status === 200 && JSON.parse(body).status === 'active';
      },
      {
        timeout: healthTimeout,
        interval: 50,
        label: ready === 'listening' ? 'volt /v1/health to answer' : 'volt /v1/health to report {"status":"active"}',
        failFast: () => {
          if (state.spawnError) return new Error(`could not start ${bin}: ${state.spawnError.message}`);
          if (state.exited) return new Error(`volt exited during startup (code ${state.code}, signal ${state.signal})`);
          return undefined;
        },
      },
    );
  } catch (err) {
    await volt.stop().catch(() => {});
    err.message += `\n----- volt logs -----\n${logs.text()}\n----- end of volt logs -----`;
    throw err;
  }
  return volt;
}

// ---------------------------------------------------------------------------
// Test wrapper

/**
 * Runs a LIFO list of clean-up steps, continuing past failures and reporting
 * the first one.
 */
export class Cleanup {
  constructor() {
    this.steps = [];
  }
  defer(fn) {
    this.steps.push(fn);
  }
  async run() {
    let first;
    while (this.steps.length) {
      const fn = this.steps.pop();
      try {
        await fn();
      } catch (err) {
        first ??= err;
      }
    }
    if (first) throw first;
  }
}

/**
 * Runs a test body with the checks every volt test shares: a volt that died during
 * the body fails it; `cleanup` runs however the body ends; the volt's logs are printed
 * when it failed (or always with VOLT_TEST_LOGS=1). `getVolt` returns the volt (it may
 * be started inside the body).
 */
export async function guarded(name, cleanup, getVolt, body) {
  let failed = false;
  try {
    await body();
    const exited = getVolt()?.exited;
    if (exited) throw new Error(`volt exited during the test (code ${exited.code}, signal ${exited.signal})`);
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    try {
      await cleanup.run();
    } finally {
      const volt = getVolt();
      if (volt && (failed || SHOW_LOGS)) volt.printLogs(failed ? `logs of failed test "${name}"` : 'logs');
    }
  }
}

/**
 * Declares a `node:test` test that gets its own database and volt:
 *
 *   voltTest('name of the behaviour', { setup: 'CREATE TABLE ...' }, async ({ db, volt, cleanup }) => { ... })
 *
 * Options: `setup` (SQL run before volt starts), `secret`, `env`, `timeout`.
 * The volt logs are printed when the test fails (or always with VOLT_TEST_LOGS=1),
 * and a volt that died during the test fails it.
 */
export function voltTest(name, opts, fn) {
  if (typeof opts === 'function') [opts, fn] = [{}, opts];
  test(name, { timeout: opts.timeout ?? 60_000 }, async (t) => {
    // Fail fast, before creating anything, when not run through ./scripts/test
    // or when there is no binary yet.
    databaseUrl();
    voltBin();
    const cleanup = new Cleanup();
    let volt;
    await guarded(name, cleanup, () => volt, async () => {
      const db = await createTestDb(name.split(/\s+/).slice(0, 4).join('_'));
      cleanup.defer(() => db.drop());
      if (opts.setup) await db.client.query(opts.setup);
      volt = await startVolt({ databaseUrl: db.url, streamId: db.streamId, secret: opts.secret, env: opts.env });
      cleanup.defer(() => volt.stop());
      await fn({ t, db, volt, cleanup });
    });
  });
}
