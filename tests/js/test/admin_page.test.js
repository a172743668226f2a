// The live admin page (GET /admin) in headless Chromium: it draws the actor tree from
// /v1/admin/tree, needs the secret, and updates itself.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { openShape, request } from '../support/shape.js';
import { voltTest } from '../support/volt.js';

const run = promisify(execFile);

function chromiumBin() {
  return ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p)) ?? 'chromium';
}

/** The page's DOM after its scripts have run for a (virtual) while. */
async function renderedDom(url, cleanup) {
  const profile = await mkdtemp(path.join(os.tmpdir(), 'volt-chromium-'));
  cleanup.defer(() => rm(profile, { recursive: true, force: true }));
  const { stdout } = await run(
    chromiumBin(),
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      `--user-data-dir=${profile}`,
      // Virtual time runs the page's fetches and its refresh timer before the dump.
      '--virtual-time-budget=4000',
      '--dump-dom',
      url,
    ],
    { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
  );
  return stdout;
}

const SECRET = 'admin-page-secret';

voltTest(
  'the admin page draws the live actor tree in a browser, behind the secret',
  { setup: 'CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1);', secret: SECRET },
  async ({ volt, cleanup }) => {
    // One shape, so the tree has a Consumer.
    const s = openShape(volt, { table: 'items', secret: SECRET }, { cleanup });
    await s.initialRows();

    const denied = await request(volt, '/admin');
    assert.equal(denied.status, 401);

    const dom = await renderedDom(`${volt.url}/admin?secret=${SECRET}`, cleanup);
    for (const kind of ['StackSupervisor', 'StatusMonitor', 'ShapeLogCollector', 'ShapeCache', 'ReplicationClient', 'Consumer']) {
      assert.match(dom, new RegExp(`<details[^>]*data-kind="${kind}"`), `${kind} is drawn`);
    }
    // Collapsible: nested <details> elements, open by default.
    assert.match(dom, /<details[^>]*data-kind="CoreSupervisor"[^>]*open/);
    // The header shows what the stats endpoint says.
    assert.match(dom, /id="status" class="active">active</);
    assert.match(dom, /id="shapes">1</);
    assert.match(dom, /<span id="error"><\/span>/, 'no refresh error');
    // It has refreshed itself (the timestamp replaced "never").
    assert.doesNotMatch(dom, /id="updated">never</);
  },
);
