// Browser checks of the cluster-wide UI, run by clusterview_test.go with
// three fanout nodes on one PostgreSQL database. The page is always node
// 0's.
//
// Environment (set by clusterview_test.go):
//   PHASE                 "live": all three run; "dead": node FANOUT_DEAD was killed
//   FANOUT_ADMIN_URL      node 0's admin API, with admin_token FANOUT_ADMIN_TOKEN
//   FANOUT_TRACKING_URL   the tracking API of node FANOUT_TAKER
//   FANOUT_SOURCE, FANOUT_WRITE_KEY, FANOUT_DESTINATION
//                         a pair whose destination node FANOUT_OWNER delivers
//   SCREENSHOTS           where to save a screenshot of each page
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { launchOptions, requireEnv, runChecks } from '../fanouttest/chromium.mjs';

const env = (k) => requireEnv(k, 'clusterview_test.go (go test ./test/ui)');
const PHASE = env('PHASE');
const ADMIN = env('FANOUT_ADMIN_URL');
const TOKEN = env('FANOUT_ADMIN_TOKEN');
const SOURCE = env('FANOUT_SOURCE');
const DEST = env('FANOUT_DESTINATION');
const TAKER = env('FANOUT_TAKER');
const OWNER = env('FANOUT_OWNER');
const DEAD = env('FANOUT_DEAD');
const SHOTS = env('SCREENSHOTS');
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch(launchOptions(env('CHROMIUM')));

async function newPage() {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  // The token, as the login form stores it.
  await ctx.addInitScript((t) => sessionStorage.setItem('fanout.admin_token', t), TOKEN);
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.errors = errors;
  return page;
}

async function send(id) {
  const res = await fetch(env('FANOUT_TRACKING_URL') + '/v1/track', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Basic ' + Buffer.from(env('FANOUT_WRITE_KEY') + ':').toString('base64') },
    body: JSON.stringify({ type: 'track', event: 'Clustered', userId: 'u1', messageId: id }),
  });
  assert.equal(res.status, 200, `POST /v1/track: ${res.status}`);
}

const checks = [];
const check = (phase, name, fn) => phase === PHASE && checks.push({ name, fn });

check('live', 'the debugger of one node shows an event a second took in and a third delivered', async () => {
  const t = Date.now();
  const page = await newPage();
  await page.goto(`${ADMIN}/#/debugger?source=${SOURCE}`);
  console.log(`     page loaded after ${Date.now() - t} ms`);
  await page.waitForSelector('[data-testid=conn]:text("Live")');
  console.log(`     live after ${Date.now() - t} ms`);
  // The stream follows the other nodes before the event is sent.
  await page.waitForTimeout(500);
  const id = 'ui-cluster-' + Date.now();
  await send(id);
  const t0 = Date.now();
  const row = page.locator(`[data-testid=event][data-message-id="${id}"]`);
  await row.waitFor({ timeout: 20_000 });
  console.log(`     the event shown after ${Date.now() - t0} ms`);
  await row.click();
  const status = page.locator(`[data-testid=outcomes] tr[data-destination=${DEST}] [data-field=status]`);
  await page.waitForFunction(
    (sel) => document.querySelector(sel)?.textContent === 'delivered',
    `[data-testid=outcomes] tr[data-destination=${DEST}] [data-field=status]`,
    { timeout: 20_000 },
  );
  assert.equal(await status.textContent(), 'delivered');
  console.log(`     delivered shown after ${Date.now() - t0} ms`);
  assert.match(await page.locator('[data-testid=detail] .detail-head .muted').textContent(), new RegExp(`by ${TAKER}`));
  assert.equal(await page.locator('[data-testid=nodes-down]').count(), 0, 'every node answers');
  await page.screenshot({ path: join(SHOTS, 'cluster-debugger.png') });
  assert.deepEqual(page.errors, []);
});

check('live', 'destinations say which node delivers them, and every node answers', async () => {
  const page = await newPage();
  await page.goto(`${ADMIN}/#/destinations`);
  await page.waitForSelector('[data-testid=node-count]:text("3 of 3 nodes")');
  // A destination shows its delivering node once it has work; send some.
  for (let i = 0; i < 20; i++) await send(`ui-dest-${Date.now()}-${i}`);
  const nodes = page.locator(`[data-testid=destination][data-name=${DEST}] [data-field=nodes]`);
  await page.waitForFunction(
    ([sel, owner]) => document.querySelector(sel)?.textContent.includes(owner),
    [`[data-testid=destination][data-name=${DEST}] [data-field=nodes]`, OWNER],
    { timeout: 20_000 },
  ).catch(async () => assert.fail(`${DEST} shows "${await nodes.textContent().catch(() => 'nothing')}", want ${OWNER}`));
  await page.screenshot({ path: join(SHOTS, 'cluster-destinations.png') });
  assert.deepEqual(page.errors, []);
});

check('dead', 'with a node killed, each page names it and goes on', async () => {
  const page = await newPage();
  for (const [path, ready] of [
    ['/#/overview?range=1h', '[data-testid=pair]'],
    ['/#/destinations', '[data-testid=destination]'],
    [`/#/debugger?source=${SOURCE}`, '[data-testid=event]'],
  ]) {
    await page.goto(ADMIN + path);
    await page.waitForSelector(ready, { timeout: 20_000 });
    await page.waitForSelector(`[data-testid=nodes-down] li[data-node="${DEAD}"]`, { timeout: 20_000 });
    assert.match(await page.locator('[data-testid=nodes-down]').textContent(), /1 node of 3 not answering/, path);
  }
  await page.goto(ADMIN + '/#/overview?range=1h');
  await page.waitForSelector('[data-testid=node-count]:text("2 of 3 nodes")');
  await page.screenshot({ path: join(SHOTS, 'cluster-overview-node-down.png') });
  assert.deepEqual(page.errors, []);
});

const failed = await runChecks(checks);
await browser.close();
process.exit(failed ? 1 : 0);
