// Helpers around the real @electric-sql/client and raw HTTP requests.

import { isChangeMessage, isControlMessage, Shape, ShapeStream } from '@electric-sql/client';

import { waitFor } from './volt.js';

/**
 * Subscribes to a shape on `volt` with the real client and records everything
 * it sees. `cleanup` (a Cleanup) gets a step that aborts the stream.
 *
 * Returns:
 * - `stream`, `shape`: the client objects;
 * - `messages`: every message delivered to `stream.subscribe`, in order;
 * - `batches`: the same, grouped as delivered (one per HTTP response);
 * - `upToDateStates`: a snapshot of our own materialisation of the shape
 *   (Map key -> row) taken at every `up-to-date` control message;
 * - `errors`: errors reported by the stream;
 * - `changes()`: the change messages; `liveChanges()`: those that came from
 *   replication (they carry `headers.lsn`), i.e. not snapshot rows;
 * - `initialRows()`: `await shape.rows` with a deadline;
 * - `waitRows(pred, label)`: waits until `pred(shape.currentRows)` holds,
 *   failing fast on stream errors;
 * - `close()`.
 */
export function openShape(volt, params, { cleanup, timeout = 10_000, ...options } = {}) {
  const aborter = new AbortController();
  const errors = [];
  const messages = [];
  const batches = [];
  const upToDateStates = [];
  const materialised = new Map();

  const stream = new ShapeStream({
    url: `${volt.url}/v1/shape`,
    params,
    signal: aborter.signal,
    // Record and stop: a test should see the error, not a retry loop.
    onError: (err) => {
      errors.push(err);
    },
    ...options,
  });

  stream.subscribe(
    (batch) => {
      batches.push(batch);
      for (const msg of batch) {
        messages.push(msg);
        if (isChangeMessage(msg)) applyChange(materialised, msg);
        else if (isControlMessage(msg) && msg.headers.control === 'must-refetch') materialised.clear();
        else if (isControlMessage(msg) && msg.headers.control === 'up-to-date') {
          upToDateStates.push(new Map([...materialised].map(([k, v]) => [k, { ...v }])));
        }
      }
    },
    (err) => errors.push(err),
  );
  const shape = new Shape(stream);

  const failFast = () => (errors.length ? describeError(errors[0]) : undefined);

  let closed = false;
  const session = {
    stream,
    shape,
    messages,
    batches,
    upToDateStates,
    errors,
    changes: () => messages.filter(isChangeMessage),
    liveChanges: () => messages.filter((m) => isChangeMessage(m) && m.headers.lsn !== undefined),
    async initialRows() {
      let settled = false;
      const rows = shape.rows.finally(() => {
        settled = true;
      });
      rows.catch(() => {});
      await waitFor(() => settled, { timeout, label: `initial rows of ${JSON.stringify(params)}`, failFast });
      return rows;
    },
    waitRows(pred, label = 'rows', opts = {}) {
      return waitFor(() => pred(shape.currentRows), { timeout, label, failFast, ...opts });
    },
    waitMessages(pred, label = 'messages', opts = {}) {
      return waitFor(() => pred(messages), { timeout, label, failFast, ...opts });
    },
    close() {
      if (closed) return;
      closed = true;
      shape.unsubscribeAll();
      stream.unsubscribeAll();
      aborter.abort();
    },
  };
  cleanup?.defer(() => session.close());
  return session;
}

function applyChange(map, msg) {
  const { operation } = msg.headers;
  if (operation === 'insert') map.set(msg.key, { ...msg.value });
  else if (operation === 'update') map.set(msg.key, { ...(map.get(msg.key) ?? {}), ...msg.value });
  else if (operation === 'delete') map.delete(msg.key);
}

function describeError(err) {
  const parts = [err?.message ?? String(err)];
  if (err?.status) parts.push(`status ${err.status}`);
  if (err?.json) parts.push(`body ${JSON.stringify(err.json)}`);
  else if (err?.text) parts.push(`body ${err.text}`);
  return new Error(`shape stream failed: ${parts.join('; ')}`);
}

/** Rows sorted by `id`, for comparisons. */
export function byId(rows) {
  return [...rows].sort((a, b) => Number(a.id) - Number(b.id));
}

/** Key-order-independent text form of a set of rows, for comparing states. */
export function canon(rows) {
  return JSON.stringify(byId(rows).map((r) => Object.fromEntries(Object.entries(r).sort())));
}

/** `"public"."<table>"/"<id>"`, the key volt must use for a single-column PK. */
export function keyOf(table, id, schema = 'public') {
  return `"${schema}"."${table}"/"${id}"`;
}

/** A compact `op:key` trace of change messages, for order assertions. */
export function trace(changes) {
  return changes.map((m) => `${m.headers.operation}:${m.key}`);
}

/**
 * Raw GET (or other method) against volt. Returns `{ res, status, headers,
 * text, body }` where `body` is the parsed JSON (or undefined).
 */
export async function request(volt, pathAndQuery, { method = 'GET', headers, timeout = 15_000 } = {}) {
  const res = await fetch(`${volt.url}${pathAndQuery}`, {
    method,
    headers,
    signal: AbortSignal.timeout(timeout),
  });
  const text = await res.text();
  let body;
  if (text.length) {
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
  }
  return { res, status: res.status, headers: res.headers, text, body };
}

/** Builds `/v1/shape?...` from an object (arrays are joined with commas). */
export function shapePath(query) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined) continue;
    qs.set(k, Array.isArray(v) ? v.join(',') : String(v));
  }
  return `/v1/shape?${qs}`;
}
