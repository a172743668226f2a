// nginx as a caching reverse proxy in front of volt, with the config shipped in
// examples/nginx/volt-cache.conf: the official client works through it, and many
// clients doing the same initial sync are served from its cache.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { byId, openShape } from '../support/shape.js';
import { freePort, REPO_ROOT, voltTest, waitFor } from '../support/volt.js';

const ITEMS = `
  CREATE TABLE items (id int PRIMARY KEY, title text);
  INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 200) g;
`;

/** Debian installs nginx in /usr/sbin, which is not on every user's PATH. */
function nginxBin() {
  return ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p)) ?? 'nginx';
}

/** Starts nginx with the shipped config in front of `volt`; returns { url, log(), stop() }. */
async function startNginx(volt, cleanup) {
  const prefix = await mkdtemp(path.join(os.tmpdir(), 'volt-nginx-'));
  // Run as root, nginx's workers drop to `nobody`: they must be able to write here.
  await chmod(prefix, 0o777);
  const port = await freePort();
  const template = await readFile(path.join(REPO_ROOT, 'examples/nginx/volt-cache.conf'), 'utf8');
  const conf = template
    .replaceAll('${PREFIX}', prefix)
    .replaceAll('${UPSTREAM}', `127.0.0.1:${new URL(volt.url).port}`)
    .replaceAll('${LISTEN}', `127.0.0.1:${port}`);
  const confPath = path.join(prefix, 'nginx.conf');
  await writeFile(confPath, conf);
  const child = spawn(nginxBin(), ['-p', prefix, '-c', confPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  let exited = null;
  child.on('exit', (code) => (exited = code));
  cleanup.defer(async () => {
    if (exited === null) {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (exited !== null) throw new Error(`nginx exited with ${exited}: ${stderr}`);
      const res = await fetch(`${url}/v1/health`);
      return res.status === 200;
    },
    { label: 'nginx proxying to volt', timeout: 15_000 },
  );
  return {
    url,
    async log() {
      return (await readFile(path.join(prefix, 'access.log'), 'utf8')).trim().split('\n');
    },
  };
}

voltTest('the official client syncs and follows a shape through the nginx cache', { setup: ITEMS }, async ({ db, volt, cleanup }) => {
  const nginx = await startNginx(volt, cleanup);
  const s = openShape({ url: nginx.url }, { table: 'items', where: 'id <= 3' }, { cleanup });
  assert.deepEqual(byId(await s.initialRows()), [
    { id: 1, title: 'item 1' },
    { id: 2, title: 'item 2' },
    { id: 3, title: 'item 3' },
  ]);
  await db.client.query(`UPDATE items SET title = 'two!' WHERE id = 2`);
  await s.waitRows((rows) => rows.find((r) => r.id === 2)?.title === 'two!', 'live update through nginx');
});

voltTest('many clients doing the same initial sync through nginx reach volt once per response', { setup: ITEMS }, async ({ volt, cleanup }) => {
  const nginx = await startNginx(volt, cleanup);
  const clients = 50;
  // Each client does what the official client does for its initial sync: offset=-1,
  // then the offsets the responses give, until up-to-date.
  const syncOnce = async () => {
    let query = 'table=items&offset=-1';
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${nginx.url}/v1/shape?${query}`);
      assert.equal(res.status, 200);
      const body = await res.json();
      const handle = res.headers.get('electric-handle');
      const offset = res.headers.get('electric-offset');
      if (body.some((m) => m.headers?.control === 'up-to-date')) return body;
      query = `table=items&handle=${handle}&offset=${offset}`;
    }
    throw new Error('no up-to-date after 20 requests');
  };
  await Promise.all(Array.from({ length: clients }, syncOnce));

  const lines = await nginx.log();
  const shapeLines = lines.filter((l) => l.includes('/v1/shape?'));
  const upstream = shapeLines.filter((l) => / (MISS|EXPIRED|UPDATING|BYPASS|-) [\d.]+$/.test(l));
  const hits = shapeLines.filter((l) => / HIT [\d.]+$/.test(l));
  // 50 clients x (snapshot + catch-up) requests; volt sees one per distinct response.
  assert.ok(shapeLines.length >= clients * 2, `${shapeLines.length} requests`);
  assert.ok(upstream.length <= 3, `upstream requests:\n${upstream.join('\n')}`);
  assert.equal(hits.length + upstream.length, shapeLines.length);
});
