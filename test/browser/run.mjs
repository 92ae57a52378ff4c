// Sends every call of Segment's analytics.js (@segment/analytics-next,
// pinned in package-lock.json) from a page in Debian's chromium to fanout,
// once per way a user sets it up, and reports what the page saw. Run by
// browser_test.go, which checks what fanout delivered.
//
// Environment (set by browser_test.go):
//   CHROMIUM     the browser, such as /usr/bin/chromium
//   PAGE_URL     the test page, on another origin than fanout's
//   FANOUT_URL   fanout's tracking API (its public_url)
//   WRITE_KEY    the write key of the page's source
//
// It prints one line `RESULT {json}`: per mode, the messageId of each call,
// the page's anonymousId, userAgent and URL, and each event as the page
// posted it; and the failures it saw (a
// failed request, an answer >= 400, a console error or warning, a page
// error). It exits 1 when there was any.
import { chromium } from 'playwright-core';
import { launchOptions, requireEnv } from '../fanouttest/chromium.mjs';

const env = (k) => requireEnv(k, 'browser_test.go (go test ./test/browser)');
const PAGE_URL = env('PAGE_URL');
const FANOUT = env('FANOUT_URL');
const WRITE_KEY = env('WRITE_KEY');
const apiHost = new URL(FANOUT).host + '/v1';

// The browser's clock runs an hour behind the server's, so that the
// timestamps fanout delivers show its clock-skew correction.
const SKEW_MS = 60 * 60 * 1000;

const browser = await chromium.launch(launchOptions(env('CHROMIUM')));

// The modes: how a user points analytics.js at fanout.
//   standard  settings given inline, apiHost as a load option: one request per call
//   batching  the same with the batching delivery strategy: calls go together to /v1/b
//   cdn       settings loaded from fanout through cdnURL, the one line the README gives
const modes = ['standard', 'batching', 'cdn'];

const failures = [];
const result = { modes: {}, failures };

for (const mode of modes) {
  // A new context is a new profile: no anonymousId or queued events
  // carried from one mode to the next.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.clock.install({ time: new Date(Date.now() - SKEW_MS) });

  const fail = (what) => failures.push(`${mode}: ${what}`);
  const sent = []; // the events posted to fanout, as the page sent them
  let metrics = 0; // posts of analytics.js's own metrics to /v1/m
  const inflight = new Set();
  page.on('request', (r) => inflight.add(r));
  page.on('requestfinished', (r) => inflight.delete(r));
  page.on('requestfailed', (r) => {
    inflight.delete(r);
    fail(`${r.method()} ${r.url()} failed: ${r.failure()?.errorText}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) fail(`${r.request().method()} ${r.url()}: ${r.status()}`);
    if (r.request().method() !== 'POST' || !r.url().startsWith(FANOUT)) return;
    const path = new URL(r.url()).pathname;
    const body = r.request().postDataJSON();
    if (path === '/v1/b') sent.push(...body.batch.map((event) => ({ path, event })));
    else if (path === '/v1/m') metrics++;
    else sent.push({ path, event: body });
  });
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') fail(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => fail(`page error: ${e}`));

  await page.goto(PAGE_URL);
  const out = await page.evaluate(
    async ({ mode, writeKey, fanout, apiHost }) => {
      const { AnalyticsBrowser } = window.AnalyticsNext;
      const segment = { apiHost, protocol: 'http' };
      // Inline settings carry what fanout's settings document would:
      // the Segment.io integration, and metrics sent to fanout.
      const inline = { integrations: { 'Segment.io': { apiKey: writeKey } }, metrics: { sampleRate: 1, flushTimer: 500 } };
      let analytics;
      switch (mode) {
        case 'standard':
          analytics = AnalyticsBrowser.load({ writeKey, cdnSettings: inline }, { integrations: { 'Segment.io': segment } });
          break;
        case 'batching':
          analytics = AnalyticsBrowser.load(
            { writeKey, cdnSettings: inline },
            { integrations: { 'Segment.io': { ...segment, deliveryStrategy: { strategy: 'batching', config: { size: 5, timeout: 1000 } } } } },
          );
          break;
        case 'cdn':
          analytics = AnalyticsBrowser.load({ writeKey, cdnURL: fanout });
          break;
      }
      const user = 'user-' + mode;
      const ids = {};
      ids.identify = (await analytics.identify(user, { email: user + '@example.com', name: 'Ada ' + mode, plan: 'pro' })).event.messageId;
      ids.track = (await analytics.track('Order Completed', { order_id: 'o-' + mode, revenue: 42.5, currency: 'EUR' })).event.messageId;
      ids.page = (await analytics.page('Docs', 'Pricing', { plan: 'pro' })).event.messageId;
      ids.group = (await analytics.group('group-' + mode, { name: 'Acme', employees: 12 })).event.messageId;
      ids.alias = (await analytics.alias(user + '-new', user)).event.messageId;
      const [instance] = await analytics;
      return { ids, anonymousId: instance.user().anonymousId(), userAgent: navigator.userAgent, url: location.href };
    },
    { mode, writeKey: WRITE_KEY, fanout: FANOUT, apiHost },
  );

  // Wait until the page has posted all five calls and nothing is in
  // flight, or 20 seconds.
  const deadline = Date.now() + 20_000;
  while ((sent.length < 5 || inflight.size > 0) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  // A moment more for anything sent twice.
  await new Promise((r) => setTimeout(r, 500));
  out.sent = sent;
  if (sent.length !== 5) fail(`posted ${sent.length} events, want 5: ${sent.map((s) => s.path + ' ' + s.event.type)}`);
  const paths = [...new Set(sent.map((s) => s.path))].sort().join(' ');
  const want = mode === 'batching' ? '/v1/b' : '/v1/a /v1/g /v1/i /v1/p /v1/t';
  if (paths !== want) fail(`posted to ${paths}, want ${want}`);
  result.modes[mode] = out;
  console.log(`${mode}: posted ${sent.map((s) => s.event.type + ' -> ' + s.path).join(', ')}; ${metrics} metrics posts to /v1/m`);
  await context.close();
}

await browser.close();
console.log('RESULT ' + JSON.stringify(result));
for (const f of failures) console.log('FAIL ' + f);
process.exit(failures.length ? 1 : 0);
