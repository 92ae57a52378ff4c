// Browser checks of fanout's web UI, run by ui_test.go once fanout runs
// and its known traffic has settled. It drives Debian's chromium through
// playwright-core and compares what the pages show with the admin API.
//
// Environment (set by ui_test.go):
//   CHROMIUM                 the browser, such as /usr/bin/chromium
//   FANOUT_ADMIN_URL         a fanout without admin_token
//   FANOUT_TRACKING_URL      its tracking API, and FANOUT_WRITE_KEY for source "web"
//   FANOUT_LOCKED_ADMIN_URL  a fanout with admin_token FANOUT_ADMIN_TOKEN
//   FANOUT_FULL_ADMIN_URL    a fanout whose storage.min_free no disk has: ingest refuses events
//   FANOUT_CLUSTER_ADMIN_URL a node of a cluster of two on PostgreSQL
//   FANOUT_SECRET            a destination's API key no page may show
//   SCREENSHOTS              where to save a screenshot of each page
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { launchOptions, requireEnv, runChecks } from '../fanouttest/chromium.mjs';

const env = (k) => requireEnv(k, 'ui_test.go (go test ./test/ui)');
const ADMIN = env('FANOUT_ADMIN_URL');
const TRACKING = env('FANOUT_TRACKING_URL');
const WRITE_KEY = env('FANOUT_WRITE_KEY');
const LOCKED = env('FANOUT_LOCKED_ADMIN_URL');
const FULL = env('FANOUT_FULL_ADMIN_URL');
const CLUSTER = env('FANOUT_CLUSTER_ADMIN_URL');
const TOKEN = env('FANOUT_ADMIN_TOKEN');
const SECRET = env('FANOUT_SECRET');
const SHOTS = env('SCREENSHOTS');
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch(launchOptions(env('CHROMIUM')));

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

async function api(base, path, token) {
  const res = await fetch(base + '/api/v1' + path, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
  return { status: res.status, body: res.status === 200 ? await res.json() : await res.text() };
}

async function send(event) {
  const res = await fetch(TRACKING + '/v1/track', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Basic ' + Buffer.from(WRITE_KEY + ':').toString('base64') },
    body: JSON.stringify(event),
  });
  assert.equal(res.status, 200, `POST /v1/track: ${res.status} ${await res.text()}`);
}

async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && !/401/.test(m.text()) && errors.push(m.text()));
  page.errors = errors;
  return page;
}

const figureFields = ['delivered_first_attempt', 'delivered_after_retries', 'failed', 'unsupported', 'pending_retry', 'archived', 'retried_duplicate_risk'];
const num = (s) => Number(s.replace(/[^0-9]/g, ''));

// readOverview reads every (source, destination) row of the overview page.
async function readOverview(page) {
  return page.$$eval('[data-testid=pair]', (rows) =>
    rows.map((r) => {
      const o = { source: r.dataset.source, destination: r.dataset.destination };
      for (const td of r.querySelectorAll('[data-field]')) o[td.dataset.field] = td.textContent.trim();
      return o;
    }),
  );
}

// refresh clicks the page's Refresh button and waits for the new answer.
async function refresh(page) {
  const before = await page.getAttribute('[data-testid=updated]', 'data-updated');
  await page.click('[data-testid=refresh]');
  await page.waitForFunction(
    (b) => {
      const el = document.querySelector('[data-testid=updated]');
      return el && el.dataset.updated && el.dataset.updated !== b;
    },
    before,
    { timeout: 10_000 },
  );
}

check('overview shows the same counts as the admin API', async () => {
  const page = await newPage();
  await page.goto(ADMIN + '/#/overview?range=1h');
  await page.waitForSelector('[data-testid=pair]');
  // Retries may still change a count between two reads: compare a page
  // read between two equal API answers.
  let last;
  for (let i = 0; i < 10; i++) {
    const a = await api(ADMIN, '/overview?range=1h');
    await refresh(page);
    const shown = await readOverview(page);
    const totals = await page.$$eval('[data-testid=figures] [data-field]', (els) =>
      Object.fromEntries(els.map((e) => [e.dataset.field, e.textContent.trim()])),
    );
    const b = await api(ADMIN, '/overview?range=1h');
    if (JSON.stringify(a.body.pairs) !== JSON.stringify(b.body.pairs)) continue;
    last = { api: b.body, shown, totals };
    break;
  }
  assert.ok(last, 'the overview kept changing: no two equal API answers in 10 tries');
  const { api: o, shown, totals } = last;
  const sources = (await api(ADMIN, '/sources')).body;
  const expected = sources.flatMap((s) => s.destinations.map((d) => `${s.name}/${d}`)).sort();
  assert.deepEqual(shown.map((r) => `${r.source}/${r.destination}`).sort(), expected, 'one row per connection');
  for (const row of shown) {
    const p = o.pairs.find((x) => x.source === row.source && x.destination === row.destination) || {};
    for (const f of figureFields) {
      assert.equal(num(row[f]), p[f] || 0, `${row.source} → ${row.destination}: ${f} shows ${row[f]}, API says ${p[f] || 0}`);
    }
    if (p.latency?.count) assert.match(row.p95, /\d/, `${row.source} → ${row.destination}: P95 latency`);
  }
  for (const f of figureFields) assert.equal(num(totals[f]), o[f], `headline ${f} shows ${totals[f]}, API says ${o[f]}`);
  // The known traffic of ui_test.go, as a sanity check of the comparison.
  const web = (d) => shown.find((r) => r.source === 'web' && r.destination === d);
  assert.equal(num(web('ok').delivered_first_attempt), 28);
  assert.equal(num(web('flaky').failed), 3);
  assert.equal(num(web('flaky').delivered_after_retries), 2);
  // The duplicate-risk figure says what it counts.
  for (const sel of ['[data-testid=figures] .figure:has([data-field=retried_duplicate_risk])', '[data-testid=source] th[title]']) {
    assert.match(await page.locator(sel).first().getAttribute('title'), /ambiguous failure.*does not deduplicate/, `${sel} tooltip`);
  }
  assert.equal(await page.locator('[data-testid=storage-banner]').count(), 0, 'no storage banner with a 1 MB reserve');
  // Both charts drew.
  assert.equal(await page.locator('[data-testid=chart-delivery] canvas').count(), 1);
  assert.equal(await page.locator('[data-testid=chart-latency] canvas').count(), 1);
  // A row narrows the figures to its (source, destination).
  await page.click('[data-testid=pair][data-source=web][data-destination=flaky]');
  await page.waitForSelector('[data-testid=selection]:text("web → flaky")');
  await page.waitForFunction(() => !document.querySelector('[data-testid=updated]')?.textContent.includes('Loading'));
  await refresh(page);
  const one = (await api(ADMIN, '/overview?range=1h&source=web&destination=flaky')).body;
  for (const f of figureFields) {
    const shown = await page.textContent(`[data-testid=figures] [data-field=${f}]`);
    assert.equal(num(shown), one[f], `web → flaky headline ${f} shows ${shown}, API says ${one[f]}`);
  }
  // Another range asks the API again.
  await page.click('[data-range="10m"]');
  await page.waitForURL(/range=10m/);
  await page.waitForSelector('[data-range="10m"][aria-pressed=true]');
  assert.deepEqual(page.errors, []);
});

check('an issue row opens its samples, secrets redacted', async () => {
  const page = await newPage();
  await page.goto(ADMIN + '/#/overview?range=1h');
  const row = page.locator('[data-testid=issue]', { hasText: 'flaky' }).filter({ hasText: '400' });
  await row.first().waitFor();
  const issues = (await api(ADMIN, '/issues?range=1h')).body.issues;
  const is = issues.find((x) => x.destination === 'flaky' && x.status === 400);
  assert.ok(is, 'the API lists the flaky destination 400s');
  assert.equal(num(await row.first().locator('[data-field=count]').textContent()), is.count);
  await row.first().click();
  const samples = page.locator('[data-testid=samples]');
  await samples.waitFor();
  const event = await samples.locator('[data-testid=sample-event]').textContent();
  const request = await samples.locator('[data-testid=sample-request]').textContent();
  const response = await samples.locator('[data-testid=sample-response]').textContent();
  assert.match(event, /Coupon Applied/, 'what was sent to fanout');
  assert.match(request, /POST http:\/\/127\.0\.0\.1:\d+\/flaky/, 'the request line');
  assert.match(request, /X-Api-Key: \[redacted\]/, 'the API key header is redacted');
  assert.match(response, /HTTP 400/, 'the response status');
  assert.match(response, /key \[redacted\] has no default user/, 'the echoed key is redacted');
  const html = await page.content();
  assert.ok(!html.includes(SECRET), 'the secret appears nowhere in the page');
  // Side by side: the three panes share one row.
  const tops = await samples.locator('.panes > section').evaluateAll((els) => els.map((e) => e.getBoundingClientRect().top));
  assert.equal(new Set(tops).size, 1, 'the three samples are side by side');
  await page.screenshot({ path: join(SHOTS, 'overview.png'), fullPage: true });
  assert.deepEqual(page.errors, []);
});

check('the debugger shows a new event within 2 seconds and stops on Pause', async () => {
  const page = await newPage();
  await page.goto(ADMIN + '/#/debugger?source=web');
  await page.waitForSelector('[data-testid=conn]:text("Live")');
  await page.waitForSelector('[data-testid=event]'); // the kept events
  const name = `UI Probe ${Date.now()}`;
  const t0 = Date.now();
  await send({ event: name, userId: 'u-probe', properties: { plan: 'pro', seats: 3 } });
  const item = page.locator('[data-testid=event]', { hasText: name });
  await item.waitFor({ timeout: 2000 });
  const elapsed = Date.now() - t0;
  assert.ok(elapsed <= 2000, `shown after ${elapsed} ms`);

  await item.click();
  const code = page.locator('[data-testid=code]');
  const pretty = await code.textContent();
  assert.ok(pretty.startsWith(`analytics.track("${name}", {`), `Pretty view: ${pretty}`);
  assert.match(pretty, /"seats": 3/);
  // Where it went: delivered to ok; limited is paused, so still pending.
  const outcome = (d) => page.locator(`[data-testid=outcomes] tr[data-destination="${d}"] [data-field=status]`);
  await page.waitForFunction(
    () => document.querySelector('[data-testid=outcomes] tr[data-destination="ok"] [data-field=status]')?.textContent === 'delivered',
    null,
    { timeout: 5000 },
  );
  assert.equal(await outcome('flaky').textContent(), 'delivered');
  assert.match(await outcome('limited').textContent(), /pending|retrying/);
  await page.screenshot({ path: join(SHOTS, 'debugger.png') });
  await page.click('[data-testid=view-raw]');
  const raw = JSON.parse(await code.textContent());
  assert.equal(raw.event, name);
  assert.ok(raw.messageId && raw.receivedAt, 'the raw view is the stored event');

  // Search narrows the list to what matches.
  await page.fill('[data-testid=search]', name);
  assert.equal(await page.locator('[data-testid=event]').count(), 1);
  await page.fill('[data-testid=search]', '');

  // Paused: an event sent now does not appear, then does on Live.
  await page.click('[data-testid=pause]');
  const count = await page.locator('[data-testid=event]').count();
  const held = `UI Paused ${Date.now()}`;
  await send({ event: held, userId: 'u-probe' });
  await page.waitForSelector('[data-testid=conn]:text("1 new event held")', { timeout: 2000 });
  await page.waitForTimeout(1500);
  assert.equal(await page.locator('[data-testid=event]', { hasText: held }).count(), 0, 'a paused list shows no new event');
  assert.equal(await page.locator('[data-testid=event]').count(), count, 'a paused list does not change');
  await page.click('[data-testid=live]');
  await page.locator('[data-testid=event]', { hasText: held }).waitFor({ timeout: 2000 });
  assert.deepEqual(page.errors, []);
});

check('the destinations page shows the queue the 429s paused', async () => {
  const page = await newPage();
  await page.goto(ADMIN + '/#/destinations');
  const limited = page.locator('[data-testid=destination][data-name=limited]');
  const q = limited.locator('[data-testid=queue][data-source=web]');
  await q.waitFor();
  assert.equal(await q.getAttribute('data-paused'), 'true');
  // Its 429s carry a Retry-After of an hour: the pause says so.
  const pausedQueue = (await api(ADMIN, '/destinations')).body.find((d) => d.name === 'limited').state.queues.find((x) => x.source === 'web');
  assert.equal(pausedQueue.pause_reason, 'retry-after', 'the API says why limited/web is paused');
  assert.equal(await q.locator('[data-field=state]').getAttribute('data-reason'), 'retry-after');
  assert.match(await q.locator('[data-field=state]').textContent(), /^waiting for Retry-After until \d\d:\d\d:\d\d · resumes in (59|60)m/);
  assert.match(await limited.locator('[data-field=paused]').textContent(), /rate limited/);
  // Nothing reaches limited, so its queue's depth is every event web has
  // sent (28 of the known traffic and the debugger's), as the API says.
  const dests = (await api(ADMIN, '/destinations')).body;
  const apiQueue = dests.find((d) => d.name === 'limited').state.queues.find((x) => x.source === 'web');
  const depth = Number((await q.locator('[data-field=depth]').textContent()).replace(/,/g, ''));
  assert.ok(depth >= 28, `limited/web depth ${depth}, want at least the 28 events of the known traffic`);
  assert.equal(depth, apiQueue.depth, 'the page shows the depth the API reports');
  assert.match(await q.locator('[data-field=oldest]').textContent(), /^\d+(s|m)/, 'the oldest job age is shown');
  const flaky = page.locator('[data-testid=destination][data-name=flaky]');
  assert.equal(await flaky.locator('[data-setting=secret]').textContent(), '[redacted]');
  assert.match(await flaky.locator('[data-setting=headers]').textContent(), /X-Api-Key\s*\[redacted\]/);
  assert.match(await flaky.locator('[data-field=circuit]').textContent(), /circuit closed/);
  assert.ok(!(await page.content()).includes(SECRET), 'the secret appears nowhere in the page');
  // The storage panel: the three directories with their free space, and
  // the 1 MB reserve of ui_test.go; ingest accepts, so no banner.
  const storage = (await api(ADMIN, '/storage')).body;
  const panel = page.locator('[data-testid=storage]');
  await panel.waitFor();
  assert.deepEqual(await panel.locator('[data-testid=storage-dir]').evaluateAll((els) => els.map((e) => e.dataset.name)), storage.dirs.map((d) => d.name));
  assert.deepEqual(storage.dirs.map((d) => d.name).sort(), ['archive', 'jobs', 'stats']);
  for (const d of storage.dirs) {
    const shown = Number(await panel.locator(`[data-testid=storage-dir][data-name=${d.name}] [data-field=free]`).getAttribute('data-bytes'));
    assert.ok(shown > 0 && Math.abs(shown - d.free_bytes) < 1 << 30, `${d.name}: shows ${shown} bytes free, API says ${d.free_bytes}`);
    assert.match(await panel.locator(`[data-testid=storage-dir][data-name=${d.name}] [data-field=free]`).textContent(), /^[\d.]+ (B|KB|MB|GB|TB|PB)$/);
  }
  assert.equal(await panel.locator('[data-field=min_free]').textContent(), '1.0 MB');
  assert.equal(await panel.locator('[data-field=accepting]').textContent(), 'accepting events');
  assert.equal(await page.locator('[data-testid=storage-banner]').count(), 0);
  await page.screenshot({ path: join(SHOTS, 'destinations.png'), fullPage: true });
  assert.deepEqual(page.errors, []);
});

check('every pause reason and the per-user holds have their label', async () => {
  // The engine's other pauses (a spent quota, a 429 without a wait, too
  // many users held) take a destination that ui_test.go does not run:
  // the page is fed a copy of the API's answer with those states.
  const page = await newPage();
  const midnight = new Date();
  midnight.setUTCHours(24, 0, 0, 0);
  const soon = new Date(Date.now() + 90_000).toISOString();
  await page.route('**/api/v1/destinations', async (route) => {
    const res = await route.fetch();
    const ds = await res.json();
    const q = ds.find((d) => d.name === 'ok').state.queues[0];
    const base = { ...q, depth: 5, buffered: 5, backlog: false, in_flight: 0, held: 0, holds: 0 };
    ds.find((d) => d.name === 'ok').state.queues = [
      { ...base, source: 'a-quota', paused_until: midnight.toISOString(), pause_reason: 'quota' },
      { ...base, source: 'b-throttled', paused_until: soon, pause_reason: 'throttled', throttled: 3 },
      { ...base, source: 'c-holds-full', paused_until: soon, pause_reason: 'holds-full', held: 40, holds: 7 },
      { ...base, source: 'd-holds', held: 12, holds: 1 },
    ];
    await route.fulfill({ response: res, json: ds });
  });
  await page.goto(ADMIN + '/#/destinations');
  const ok = page.locator('[data-testid=destination][data-name=ok]');
  const state = (src, f = 'state') => ok.locator(`[data-testid=queue][data-source=${src}] [data-field=${f}]`).textContent();
  await ok.locator('[data-testid=queue][data-source=a-quota]').waitFor();
  assert.match(await state('a-quota'), /^paused until 00:00 UTC \(daily quota\) · resumes in \d+/);
  assert.match(await state('b-throttled'), /^throttled \(429\) until \d\d:\d\d:\d\d · resumes in 1m/);
  assert.match(await state('c-holds-full'), /^too many users held: paused until \d\d:\d\d:\d\d/);
  assert.equal((await state('c-holds-full', 'holds')).trim(), 'per-user holds: 7 users, 40 jobs');
  assert.equal((await state('d-holds', 'holds')).trim(), 'per-user holds: 1 user, 12 jobs');
  assert.equal(await ok.locator('[data-testid=queue][data-source=d-holds]').getAttribute('data-paused'), 'false');
  assert.match(await ok.locator('[data-field=paused]').textContent(), /quota spent, rate limited, too many users held/);
  assert.deepEqual(page.errors, []);
});

check('a scheduler waiting on the database, and one not answering, are said so', async () => {
  // A database that stops answering is not something ui_test.go runs:
  // the page is fed a copy of the API's answer with those states.
  const page = await newPage();
  const since = new Date(Date.now() - 7_000).toISOString();
  const taken = new Date(Date.now() - 30_000).toISOString();
  await page.route('**/api/v1/destinations', async (route) => {
    const res = await route.fetch();
    const ds = await res.json();
    const [waiting, stale] = ds.filter((d) => d.state);
    waiting.state.store_wait_since = since;
    stale.state.stale = true;
    stale.state.taken_at = taken;
    await route.fulfill({ response: res, json: ds });
    page.names = [waiting.name, stale.name];
  });
  await page.goto(ADMIN + '/#/destinations');
  await page.locator('[data-field=store_wait]').waitFor();
  const [waiting, stale] = page.names;
  const badge = (name, f) => page.locator(`[data-testid=destination][data-name="${name}"] [data-field=${f}]`);
  assert.match(await badge(waiting, 'store_wait').textContent(), /waiting on the database for (7|8|9)s/);
  assert.match(await badge(stale, 'stale').textContent(), /state as of \d{4}\/\d\d\/\d\d \d\d:\d\d:\d\d: the scheduler is not answering/);
  assert.equal(await badge(waiting, 'stale').count(), 0);
  assert.equal(await badge(stale, 'store_wait').count(), 0);
  await page.screenshot({ path: join(SHOTS, 'destinations-store-wait.png') });
  assert.deepEqual(page.errors, []);
});

check('a fanout short of disk space shows the storage banner on every page', async () => {
  const storage = (await api(FULL, '/storage')).body;
  assert.equal(storage.accepting, false, `the API says ingest accepts with a 1000 TB reserve: ${JSON.stringify(storage)}`);
  const page = await newPage();
  for (const p of ['overview', 'debugger?source=web', 'destinations']) {
    await page.goto(`${FULL}/#/${p}`);
    const banner = page.locator('[data-testid=storage-banner]');
    await banner.waitFor();
    const text = await banner.textContent();
    assert.match(text, /Ingest is refusing events \(the tracking API answers 503\)/, `#/${p}: ${text}`);
    assert.match(text, /Short of the 1000 TB reserve: (jobs|stats|archive) [\d.]+ [KMGT]?B free/, `#/${p}: ${text}`);
    if (p === 'destinations') {
      await page.locator('[data-testid=storage] [data-field=accepting]:text("refusing events")').waitFor();
      await page.screenshot({ path: join(SHOTS, 'storage-full.png') });
    }
  }
  // Only the 503s of the tracking API: the page itself makes no error.
  assert.deepEqual(page.errors, []);
});

check('the cluster page lists the nodes, their heartbeats, lease ages, partitions, pipelines and machines', async () => {
  const page = await newPage();
  await page.goto(CLUSTER + '/#/cluster');
  await page.waitForSelector('[data-testid=node]');
  const v = (await api(CLUSTER, '/cluster')).body;
  assert.equal(v.nodes.length, 2, `the API lists ${JSON.stringify(v.nodes)}`);
  const rows = await page.$$eval('[data-testid=node]', (rs) =>
    rs.map((r) => {
      const o = { id: Number(r.dataset.id), name: r.dataset.name };
      for (const el of r.querySelectorAll('[data-field]')) o[el.dataset.field] = el.textContent.trim();
      return o;
    }),
  );
  assert.deepEqual(rows.map((r) => r.id), v.nodes.map((n) => n.id));
  for (const n of v.nodes) {
    const r = rows.find((r) => r.id === n.id);
    assert.equal(r.name, n.name);
    assert.equal(r.state, 'live');
    assert.equal(Number(r.partition_count), n.partitions.length, `node ${n.name}`);
    // The partitions, written as ranges, read back.
    const listed = r.partitions.split(', ').flatMap((x) => {
      const [a, b = a] = x.split('-').map(Number);
      return Array.from({ length: b - a + 1 }, (_, i) => a + i);
    });
    assert.deepEqual(listed, n.partitions, `node ${n.name}`);
    assert.match(r.lease_age, /^\d+\.\d s$/, `node ${n.name}: lease age ${r.lease_age}`);
    assert.ok(Number.parseFloat(r.lease_age) < 5, `node ${n.name}: a live node's lease age ${r.lease_age} is under the lease`);
    assert.ok(r.heartbeat.length > 0, `node ${n.name}: no last heartbeat`);
    assert.equal(r.self !== undefined, n.id === v.self, `node ${n.name}: the "this node" badge`);
    assert.equal(r.pipeline, n.pipeline_digest.slice(0, 12), `node ${n.name}: pipeline digest`);
    // Both nodes run on this machine, which they share.
    assert.equal(n.machine, v.nodes[0].machine, `node ${n.name}: machine`);
    assert.equal(r.machine, n.machine.slice(0, 8), `node ${n.name}: machine`);
    assert.equal(r.machine_shared, 'shared by 2 nodes', `node ${n.name}: machine shared`);
  }
  assert.match(await page.textContent('[data-testid=cluster-summary]'), /2 live nodes holding 64 partitions/);
  // The second node has a destination more: their pipelines differ, the
  // page warns and lists each digest with its node, and marks the node
  // that differs from the one serving the page.
  assert.equal(v.pipelines_differ, true, 'the API says the pipelines differ');
  assert.notEqual(v.nodes[0].pipeline_digest, v.nodes[1].pipeline_digest);
  const warning = page.locator('[data-testid=pipelines-differ]');
  await warning.waitFor();
  assert.match(await warning.textContent(), /The live nodes run 2 different pipelines/);
  for (const n of v.nodes) {
    assert.equal(await warning.locator(`li[data-digest="${n.pipeline_digest}"]`).textContent(), `${n.pipeline_digest.slice(0, 12)}: ${n.name}`);
  }
  const differs = rows.filter((r) => r.pipeline_differs !== undefined).map((r) => r.id);
  assert.deepEqual(differs, v.nodes.filter((n) => n.id !== v.self).map((n) => n.id), 'the node marked as differing');
  await page.screenshot({ path: join(SHOTS, 'cluster.png'), fullPage: true });
  assert.deepEqual(page.errors, []);
});

check('a fanout on the embedded store shows the cluster page as no cluster', async () => {
  assert.equal((await api(ADMIN, '/cluster')).status, 404);
  const page = await newPage();
  await page.goto(ADMIN + '/#/overview?range=1h');
  await page.click('nav a:text("Cluster")');
  const card = page.locator('[data-testid=not-cluster]');
  await card.waitFor();
  assert.match(await card.textContent(), /Not a cluster.*storage\.postgres is not set/s);
  assert.equal(await page.locator('[data-testid=node]').count(), 0);
  // The API's 404 is the answer the page expects; the page logs nothing else.
  assert.deepEqual(page.errors.filter((e) => !/status of 404/.test(e)), []);
});

check('with admin_token set, the API wants it and the login form works', async () => {
  assert.equal((await api(LOCKED, '/sources')).status, 401);
  const page = await newPage();
  await page.goto(LOCKED + '/#/overview?range=1h');
  const form = page.locator('[data-testid=login]');
  await form.waitFor();
  await page.screenshot({ path: join(SHOTS, 'login.png') });
  await form.locator('input[name=token]').fill('not-the-token');
  await form.locator('button[type=submit]').click();
  await form.locator('[role=alert]', { hasText: 'refused' }).waitFor();
  await form.locator('input[name=token]').fill(TOKEN);
  await form.locator('button[type=submit]').click();
  await page.waitForSelector('[data-testid=pair][data-source=web][data-destination=ok]');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('fanout.admin_token')), TOKEN);
  // A reload keeps the session; the debugger's stream sends the token too.
  await page.goto(LOCKED + '/#/debugger?source=web');
  await page.reload();
  await page.waitForSelector('[data-testid=conn]:text("Live")');
  await page.waitForSelector('[data-testid=event]');
  assert.equal(await page.locator('[data-testid=login]').count(), 0);
  assert.deepEqual(page.errors, []);
});

const failed = await runChecks(checks);
await browser.close();
process.exit(failed ? 1 : 0);
