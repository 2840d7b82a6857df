/**
 * The SDK in a real browser (Debian's Chromium driven by playwright-core): a user's heartbeats
 * survive a hidden tab under Chrome's intensive wake-up throttling, and the demo pages work on
 * the served SDK. Skipped, saying why, where /usr/bin/chromium is missing (`.ci/run` installs it).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { type Browser, type Page, chromium } from 'playwright-core';
import { freshDatabase, type TestDb } from './support/db.js';
import { freePort } from './support/ports.js';
import { type ClientSocket, type TestNode, call, collect, eventually, startNode } from './support/server.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** Where screenshots of the demo pages go (test artifacts, not committed). */
const ARTIFACTS = process.env.TEST_ARTIFACTS ?? fileURLToPath(new URL('../test-artifacts', import.meta.url));
/** No network beyond loopback on this machine: keep Chromium from trying (docs: STACK.md). */
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
/**
 * playwright-core (pinned) passes these features itself; Chromium reads one --enable-features,
 * so ours must carry them along with intensive throttling.
 */
const PLAYWRIGHT_FEATURES = 'CDPScreenshotNewSurface,SkipListAccountsWithoutGaiaCookies';
/** Playwright's switches that turn background throttling off, dropped to let Chrome throttle as it does for users. */
const NO_THROTTLING_SWITCHES = ['--disable-background-timer-throttling', '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows'];

/** The sleep of a test page, while polling it: fixed, but only to let the browser's time pass. */
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('client SDK in Chromium', function () {
  this.timeout(120_000);
  let db: TestDb;

  before(async function () {
    if (!existsSync(CHROMIUM)) {
      console.log(`      (skipped: no Chromium at ${CHROMIUM}; apt-get install chromium, or set CHROMIUM_PATH)`);
      this.skip();
    }
    db = await freshDatabase();
  });
  after(() => db?.close());

  /** A page origin of its own, serving `html` at `/`: the integrator's app, on another origin than the node. */
  async function appOrigin(html: string): Promise<{ url: string; server: Server }> {
    const server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
  }

  async function given(node: TestNode, chatId: string) {
    await node.api('PUT', '/v1/users/u1', { name: 'Ursula', balance: '1000' });
    await node.api('PUT', '/v1/advisors/a1', { name: 'Ada', ratePerMinute: '6', freeSeconds: 0 });
    await node.api('POST', '/v1/chats', { id: chatId, userId: 'u1', advisorId: 'a1' });
  }

  it('keeps a hidden tab\'s heartbeats on time under intensive throttling, while a setInterval in the same page lapses', async () => {
    await db.reset();
    // heartbeats every 2 s (a hidden page wakes timers on whole seconds: at most 3 s apart), inside a
    // 5 s presence window, so a heartbeat late under CI load doesn't flip the meter away
    const page$ = await appOrigin(`<!doctype html><html><head><title>hidden tab</title>
      <script type="module">
        const params = new URLSearchParams(location.search);
        const { connect } = await import(params.get('node') + '/sdk/chatmeter.js');
        window.rec = { interval: [], joined: false };
        // the naive heartbeat loop the SDK avoids: a chained timer
        setInterval(() => window.rec.interval.push(Date.now()), 1000);
        const client = connect({ url: params.get('node'), token: params.get('token') });
        await client.joinChat(params.get('chat'));
        window.rec.joined = true;
      </script></head><body></body></html>`); // no content painted: see the grace period below
    const node = await startNode(db, { METER_TICK_MS: '1000', HEARTBEAT_INTERVAL_MS: '2000', HEARTBEAT_GRACE_MS: '3000', CORS_ORIGINS: page$.url });
    const port = await freePort();
    // Chrome's grace before intensive throttling is 5 minutes; 0 s here. Chromium 156 takes the
    // parameter only for a page that has painted no content yet (a painted page gets 60 s), hence the empty body.
    const launched = await chromium.launch({
      executablePath: CHROMIUM,
      args: [...ARGS, `--enable-features=${PLAYWRIGHT_FEATURES},IntensiveWakeUpThrottling:grace_period_seconds/0`, `--remote-debugging-port=${port}`],
      ignoreDefaultArgs: [...NO_THROTTLING_SWITCHES, `--enable-features=${PLAYWRIGHT_FEATURES}`],
    });
    // Playwright's own pages emulate focus, which pins them visible; a page of the default context
    // reached with noDefaults does not, so it can really be hidden
    const browser = await chromium.connectOverCDP(`http://127.0.0.1:${port}`, { noDefaults: true });
    const heartbeats: number[] = [];
    node.app.io.on('connection', (s) => s.onAny((event) => event === 'heartbeat' && s.data.principal.role === 'user' && heartbeats.push(Date.now())));
    let advisor: ClientSocket | undefined;
    try {
      await given(node, 'c1');
      const token = await node.token('u1', 'user');
      const page = await browser.contexts()[0]!.newPage();
      await page.goto(`${page$.url}/?node=${encodeURIComponent(node.url)}&chat=c1&token=${token}`);
      await page.waitForFunction(() => (window as unknown as { rec?: { joined: boolean } }).rec?.joined === true, null, { timeout: 10_000 });
      advisor = await node.connect('a1', 'advisor');
      const meters = collect(advisor, 'meter');
      expect((await call(advisor, 'chat:start', { chatId: 'c1' })).ok).to.equal(true);
      await pause(3000); // visible: the interval's chain grows past 5, the chat runs

      const cdp = await page.context().newCDPSession(page);
      const { windowId } = await cdp.send('Browser.getWindowForTarget');
      await cdp.send('Browser.setWindowBounds', { windowId, bounds: { windowState: 'minimized' } });
      expect(await page.evaluate(() => document.visibilityState)).to.equal('hidden');
      const hiddenAt = Date.now();
      const seenBefore = meters.length;
      await pause(30_000);
      const end = Date.now();

      const rec = await page.evaluate(() => (window as unknown as { rec: { interval: number[] } }).rec);
      const interval = maxGap(rec.interval, hiddenAt, end);
      // the control: without it, this test would prove nothing
      expect(interval, 'intensive throttling engaged: the page\'s setInterval lapsed').to.be.at.least(10_000);
      const beats = maxGap(heartbeats, hiddenAt, end);
      // 3 s expected; a chained timer's gap is 10-60 s
      expect(beats, 'largest gap between the hidden tab\'s heartbeats').to.be.at.most(4_000);
      const hidden = meters.slice(seenBefore);
      expect(hidden.length, 'a meter each tick').to.be.at.least(25);
      expect(hidden.map((m) => m.state).filter((s) => s !== 'running'), 'the meter never went away').to.deep.equal([]);
      console.log(`      (hidden 30 s: setInterval's largest gap ${interval} ms, the SDK's heartbeats' ${beats} ms)`);
    } finally {
      advisor?.disconnect();
      await browser.close().catch(() => undefined);
      await launched.close();
      page$.server.close();
      await node.close();
    }
  });

  describe('the demo pages on the served SDK', () => {
    let node: TestNode;
    let browser: Browser;

    beforeEach(async () => {
      await db.reset();
      // a wide presence window: a heartbeat late under load must not flip the meter away mid-countdown
      node = await startNode(db, { METER_TICK_MS: '5000', HEARTBEAT_INTERVAL_MS: '1000', HEARTBEAT_GRACE_MS: '4000' });
      browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
    });
    afterEach(async () => {
      await browser?.close();
      await node?.close();
    });

    /** Opens a demo page; any script error or refused resource fails the test. */
    async function open(path: string): Promise<{ page: Page; errors: string[] }> {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (err) => errors.push(err.message));
      page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
      await page.goto(`${node.url}${path}`);
      return { page, errors };
    }
    const text = async (page: Page, id: string) => (await page.locator(`#${id}`).textContent()) ?? '';

    it('the dashboard shows a new chat, starts it, and the user tab counts down between pushes', async () => {
      await given(node, 'c1');
      const dashboard = await open(`/demo/advisor.html?token=${await node.token('a1', 'advisor')}`);
      await eventually(async () => (await text(dashboard.page, 'conn')) === 'live');
      await dashboard.page.locator('tr[data-chat="c1"]').waitFor();
      // a chat created now appears by itself
      await node.api('POST', '/v1/chats', { id: 'c2', userId: 'u1', advisorId: 'a1' });
      await dashboard.page.locator('tr[data-chat="c2"]').waitFor({ timeout: 5000 });

      const tab = await open(`/demo/user.html?chat=c1&token=${await node.token('u1', 'user')}`);
      await eventually(async () => (await text(tab.page, 'state')) === 'pending');
      await dashboard.page.locator('tr[data-chat="c1"] button.start').click();
      await eventually(async () => (await text(tab.page, 'state')) === 'running', 5000);
      await eventually(async () => (await dashboard.page.locator('tr[data-chat="c1"] .state').textContent()) === 'running');

      // meters come every 5 s here: over 4 s, pushes alone would show at most 2 values of the
      // countdown (m:ss); counting down between them at 4 Hz shows a new one each second
      const shown = new Set<string>();
      const from = Date.now();
      while (Date.now() - from < 4000) {
        shown.add(await text(tab.page, 'countdown'));
        await pause(200);
      }
      expect(shown.size, `countdown values ${[...shown]}`).to.be.at.least(3);

      await tab.page.locator('#end').click();
      await eventually(async () => (await text(tab.page, 'ended')).includes('you ended it'));
      await dashboard.page.locator('tr[data-chat="c1"]').waitFor({ state: 'detached', timeout: 5000 });
      expect([...tab.errors, ...dashboard.errors]).to.deep.equal([]);
    });

    it('two user tabs and the dashboard: meters move in all three, one tab closed bills once, both closed stop the meter', async () => {
      await node.close();
      node = await startNode(db, { METER_TICK_MS: '250', HEARTBEAT_INTERVAL_MS: '1000', HEARTBEAT_GRACE_MS: '1000' });
      await given(node, 'c1');
      const dashboard = await open(`/demo/advisor.html?token=${await node.token('a1', 'advisor')}`);
      const userUrl = `/demo/user.html?chat=c1&token=${await node.token('u1', 'user')}`;
      const [tabA, tabB] = [await open(userUrl), await open(userUrl)];
      for (const tab of [tabA, tabB]) await eventually(async () => (await text(tab.page, 'state')) === 'pending');
      await dashboard.page.locator('tr[data-chat="c1"] button.start').click();
      const row = (cls: string) => dashboard.page.locator(`tr[data-chat="c1"] .${cls}`).textContent();
      // meters move in all three pages
      const before = [await text(tabA.page, 'duration'), await text(tabB.page, 'duration'), await row('duration')];
      await eventually(async () => {
        const now = [await text(tabA.page, 'duration'), await text(tabB.page, 'duration'), await row('duration')];
        return now.every((d, i) => d !== before[i] && d !== '0:00');
      }, 8000);
      mkdirSync(ARTIFACTS, { recursive: true });
      await tabA.page.screenshot({ path: `${ARTIFACTS}/user-tab.png` });
      await dashboard.page.screenshot({ path: `${ARTIFACTS}/advisor-dashboard.png` });

      const meter = async () => (await node.api('GET', '/v1/chats/c1/meter')).body as { durationSeconds: number; state: string };
      // two tabs bill one second a second: over ~2.5 s, at most the seconds that passed (+1 for the edges)
      const t0 = Date.now();
      const d0 = (await meter()).durationSeconds;
      await eventually(() => Date.now() - t0 > 2500, 5000);
      expect((await meter()).durationSeconds - d0).to.be.at.most(Math.ceil((Date.now() - t0) / 1000) + 1);

      // one tab closed: the other keeps it running, still once
      await tabA.page.close();
      const t1 = Date.now();
      const d1 = (await meter()).durationSeconds;
      await eventually(() => Date.now() - t1 > 2500, 5000);
      const after = await meter();
      expect(after.state).to.equal('running');
      expect(after.durationSeconds - d1).to.be.at.least(1).and.at.most(Math.ceil((Date.now() - t1) / 1000) + 1);

      // both closed: the meter stops at once, on the dashboard too
      await tabB.page.close();
      await eventually(async () => (await row('state')) === 'away', 5000);
      const stopped = (await meter()).durationSeconds;
      const t2 = Date.now();
      await eventually(() => Date.now() - t2 > 1500, 5000);
      expect((await meter()).durationSeconds, 'nobody present: nothing billed').to.equal(stopped);
      expect([...tabA.errors, ...tabB.errors, ...dashboard.errors]).to.deep.equal([]);
    });

    it('the user tab shows a refused token as such', async () => {
      const tab = await open('/demo/user.html?chat=c1&token=forged');
      await eventually(async () => (await text(tab.page, 'conn')).includes('refused'));
    });
  });
});

/** The largest gap between timestamps within [from, to], the window's edges included. */
function maxGap(times: number[], from: number, to: number): number {
  const within = times.filter((t) => t >= from && t <= to);
  let gap = within.length ? within[0]! - from : to - from;
  for (let i = 1; i < within.length; i++) gap = Math.max(gap, within[i]! - within[i - 1]!);
  return within.length ? Math.max(gap, to - within.at(-1)!) : gap;
}
