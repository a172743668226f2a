// A rolling deploy with the real client: two volts share one storage dir; the client
// moves to the new instance while it still waits for the slot's lock (it serves the
// stored shape read-only, following the old one's writes), the old one stops, the new
// one takes over. The client syncs on throughout: same handle, no refetch, every change
// once.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { openShape, request } from '../support/shape.js';
import test from 'node:test';

import { Cleanup, createTestDb, guarded, startVolt, waitFor } from '../support/volt.js';

const shared = await mkdtemp(path.join(os.tmpdir(), 'volt-js-shared-'));

const name = 'a rolling deploy on shared storage: the real client syncs on across it without refetching';
test(name, { timeout: 60_000 }, async () => {
  const cleanup = new Cleanup();
  // The old instance stops on purpose: the one that must stay up is the new one.
  let next;
  await guarded(name, cleanup, () => next, async () => {
    cleanup.defer(() => rm(shared, { recursive: true, force: true }));
    const db = await createTestDb('rolling_shared');
    cleanup.defer(() => db.drop());
    await db.client.query('CREATE TABLE items (id int PRIMARY KEY, n int); INSERT INTO items VALUES (1, 0);');
    const env = { ELECTRIC_STORAGE_DIR: shared };
    const old = await startVolt({ databaseUrl: db.url, streamId: db.streamId, env });
    cleanup.defer(() => old.stop());
    // What a load balancer does: send each request to the instance it currently routes to.
    let target = old.url;
    const fetchClient = (input, init) => {
      const url = new URL(input instanceof Request ? input.url : input);
      url.host = new URL(target).host;
      return fetch(url, init);
    };
    const s = openShape(old, { table: 'items' }, { cleanup, fetchClient });
    await s.initialRows();
    await db.client.query('INSERT INTO items VALUES (2, 0)');
    await s.waitRows((rows) => rows.length === 2, 'row 2 from the old instance');

    next = await startVolt({ databaseUrl: db.url, streamId: db.streamId, env, ready: 'listening' });
    cleanup.defer(() => next.stop());
    await waitFor(async () => (await request(next, '/v1/health')).body?.status === 'waiting', {
      label: 'the new instance waiting on the slot lock',
    });
    // Traffic moves to the new instance while the old one still streams.
    target = next.url;
    await db.client.query('INSERT INTO items VALUES (3, 0)');
    await s.waitRows((rows) => rows.length === 3, 'row 3, written by the old instance, through the new one');

    await old.stop();
    assert.equal(old.exited?.code, 0, 'the old instance exits cleanly');
    await waitFor(async () => (await request(next, '/v1/health')).body?.status === 'active', {
      label: 'the new instance active',
    });
    await db.client.query('INSERT INTO items VALUES (4, 0); UPDATE items SET n = 1 WHERE id = 1');
    await s.waitRows((rows) => rows.length === 4 && rows.find((r) => r.id === 1)?.n === 1, 'the writes after the takeover');

    const refetches = s.messages.filter((m) => m.headers?.control === 'must-refetch');
    assert.equal(refetches.length, 0, 'no must-refetch');
    assert.deepEqual(s.errors, []);
    const changes = s.liveChanges().map((m) => `${m.headers.operation} ${m.value.id}`);
    assert.deepEqual(changes, ['insert 2', 'insert 3', 'insert 4', 'update 1']);
  });
});
