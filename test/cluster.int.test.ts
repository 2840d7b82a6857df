import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { expect } from 'chai';
import pg from 'pg';
import { shardOf } from '../server/cluster/shards.js';
import { startBalancer } from './support/balancer.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { type NodeProcess, killAll, spawnNode } from './support/processes.js';
import { type ClientSocket, call, collect, connectWith, eventually, waitFor } from './support/server.js';
import { verifyInvariants } from '../server/verify.js';
import { freePort } from './support/ports.js';

/**
 * SPEC section 6 on real node processes: several `server/main.ts` processes on one
 * Postgres database and one Redis, killed, stopped, skewed and drained for real.
 */
describe('many nodes (real processes, Postgres and Redis)', function () {
  this.timeout(90_000);
  let db: TestDb;
  let nodes: NodeProcess[] = [];
  const sockets: ClientSocket[] = [];
  const timers: NodeJS.Timeout[] = [];

  before(async function () {
    if (!process.env.DATABASE_URL || !process.env.REDIS_URL) return this.skip();
    db = await freshDatabase();
  });
  after(async () => {
    await db?.close();
  });
  beforeEach(async () => {
    await db?.reset();
  });
  afterEach(async () => {
    for (const t of timers.splice(0)) clearInterval(t);
    for (const s of sockets.splice(0)) s.close();
    await killAll(nodes);
    nodes = [];
    // what a killed node left behind is not the next test's business
    await db?.ds.query(`DELETE FROM cluster_nodes`);
    await db?.ds.query(`UPDATE settlement_shards SET owner = NULL, expires_at = '-infinity'`);
  });

  /** Starts `n` nodes on the test database and the suite's Redis (or `env`'s). */
  async function start(n: number, env: Record<string, string> = {}, each: Array<Record<string, string>> = []): Promise<NodeProcess[]> {
    // started together: a node's start is mostly loading code, and they join each other as they come
    const spawned = await Promise.allSettled(
      Array.from({ length: n }, (_, i) =>
        spawnNode({ DATABASE_URL: db.url!, REDIS_URL: process.env.REDIS_URL!, METER_TICK_MS: '200', CLUSTER_LEASE_MS: '900', ...env, ...each[i] }),
      ),
    );
    const started = spawned.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    nodes.push(...started);
    const failed = spawned.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    // every node sees the others and the shards are spread over them
    await eventually(async () => {
      const rows: Array<{ owner: string | null; n: number }> = await db.ds.query(
        `SELECT owner, count(*)::int AS n FROM settlement_shards WHERE expires_at > clock_timestamp() GROUP BY owner`,
      );
      return rows.length === n && rows.every((r) => r.owner && r.n > 0 && started.some((s) => s.nodeId === r.owner));
    }, 15_000, 100);
    return started;
  }

  /** A user with plenty of credit, an advisor at 6 credits a minute without free time, and a pending chat. */
  async function given(node: NodeProcess, chatId = 'c1', userId = 'u1', advisorId = 'a1') {
    expect((await node.api('PUT', `/v1/users/${userId}`, { balance: '1000' })).status).to.be.oneOf([200, 201]);
    expect((await node.api('PUT', `/v1/advisors/${advisorId}`, { ratePerMinute: '6', freeSeconds: 0 })).status).to.be.oneOf([200, 201]);
    expect((await node.api('POST', '/v1/chats', { id: chatId, userId, advisorId })).status).to.be.oneOf([200, 201]);
    return { chatId, userId, advisorId };
  }

  async function connect(node: NodeProcess | string, sub: string, role: 'user' | 'advisor', reconnect = false): Promise<ClientSocket> {
    const target = typeof node === 'string' ? node : node.url;
    const { body } = await nodes[0]!.api('POST', '/v1/tokens', { sub, role });
    const s = await connectWith(target, { token: body.token }, reconnect ? { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 500 } : {});
    sockets.push(s);
    return s;
  }

  /** A user tab that joins the chat (again after every reconnect) and heartbeats every 100 ms. */
  async function tab(node: NodeProcess | string, chatId: string, userId = 'u1', reconnect = false): Promise<ClientSocket> {
    const s = await connect(node, userId, 'user', reconnect);
    const joined = await call(s, 'chat:join', { chatId });
    expect(joined.ok, JSON.stringify(joined)).to.equal(true);
    if (reconnect) s.io.on('reconnect', () => s.emit('chat:join', { chatId }));
    timers.push(setInterval(() => s.emit('heartbeat', { chatId }), 100));
    return s;
  }

  /** The node that holds the lease of the chat's shard. */
  async function settlerOf(chatId: string): Promise<NodeProcess> {
    const owner = await eventually(async () => {
      const [row] = await db.ds.query(`SELECT owner FROM settlement_shards WHERE shard = $1 AND expires_at > clock_timestamp()`, [shardOf(chatId)]);
      return row?.owner as string | undefined;
    }, 10_000, 50);
    const node = nodes.find((n) => n.nodeId === owner);
    if (!node) throw new Error(`no running node holds the lease of chat ${chatId}: ${owner}`);
    return node;
  }

  /**
   * A running chat whose settler is one of three nodes, its user's tab on another (x) and
   * its start sent to the third (y), metered for two seconds.
   */
  async function runningAwayFromItsSettler(all: NodeProcess[]) {
    const { chatId } = await given(all[0]!);
    const settler = await settlerOf(chatId);
    const [x, y] = all.filter((n) => n !== settler) as [NodeProcess, NodeProcess];
    const user = await tab(x, chatId);
    expect((await y.api('POST', `/v1/chats/${chatId}/start`)).status).to.equal(200);
    await waitFor(user, 'meter', (m) => m.durationSeconds >= 2, 6000);
    return { chatId, settler, x, y, user };
  }

  /** The record's billed seconds, and the whole seconds between the chat's start and its end (or now). */
  async function billedVsPresent(chatId: string): Promise<{ billed: number; present: number }> {
    const [r] = await db.ds.query(
      `SELECT r.duration, extract(epoch FROM coalesce(c.ended_at, clock_timestamp()) - c.started_at)::float8 AS span
         FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE r.chat_id = $1`,
      [chatId],
    );
    return { billed: r.duration, present: r.span };
  }

  /** Every invariant of SPEC 1 holds (what `npm run verify` checks; its CLI is tested on its own). */
  async function expectVerifyPasses(): Promise<void> {
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  }

  /** Ends the chat over HTTP on `node` and checks it billed the time the user was present, within a tick. */
  async function endAndCheck(node: NodeProcess, chatId: string, slackSeconds = 1): Promise<void> {
    const ended = await node.api('POST', `/v1/chats/${chatId}/end`);
    expect(ended.status, JSON.stringify(ended.body)).to.equal(200);
    const { billed, present } = await billedVsPresent(chatId);
    expect(billed, `billed ${billed} s for ${present.toFixed(2)} s present`).to.be.within(Math.floor(present) - slackSeconds, Math.floor(present));
    await expectVerifyPasses();
  }

  it('pushes every meter to tabs on two nodes and the advisor on a third, seq strictly increasing', async () => {
    const [a, b, c] = await start(3);
    const { chatId } = await given(a!);
    const tabA = await tab(a!, chatId);
    const tabB = await tab(b!, chatId);
    const advisor = await connect(c!, 'a1', 'advisor');
    expect((await call(advisor, 'chat:start', { chatId })).ok).to.equal(true);
    // let the joins and the start settle, then watch the steady state
    await waitFor(advisor, 'meter', (m) => m.durationSeconds >= 1, 5000);
    const seen = [collect(tabA, 'meter'), collect(tabB, 'meter'), collect(advisor, 'meter')];
    await waitFor(advisor, 'meter', (m) => m.durationSeconds >= 4, 8000);
    await new Promise((r) => setTimeout(r, 300));
    const [onA, onB, onC] = seen.map((ms) => ms.map((m) => m.seq as number));
    for (const [name, seqs] of Object.entries({ onA, onB, onC })) {
      expect(seqs!.length, name).to.be.at.least(10);
      for (let i = 1; i < seqs!.length; i++) expect(seqs![i], `${name}: ${seqs!.join(',')}`).to.be.greaterThan(seqs![i - 1]!);
    }
    // every node's sockets got the same meters
    const common = onC!.filter((s) => s >= Math.max(onA![0]!, onB![0]!) && s <= Math.min(onA!.at(-1)!, onB!.at(-1)!));
    expect(common.length).to.be.at.least(8);
    for (const s of common) {
      expect(onA, `seq ${s} on A`).to.include(s);
      expect(onB, `seq ${s} on B`).to.include(s);
    }
    // one settler per chat: the ticks come from the lease holder only
    const settler = await settlerOf(chatId);
    const others = nodes.filter((n) => n !== settler);
    for (const n of others) expect(await n.metric('chatmeter_fenced_settlements_total')).to.equal(0);
    await endAndCheck(b!, chatId);
  });

  it('goes on metering within the lease when the settling node is SIGKILLed, bills the time present, and tabs of the dead node reconnect to the same record', async () => {
    const all = await start(3, { CLUSTER_LEASE_MS: '1000' });
    const { chatId } = await given(all[0]!);
    const settler = await settlerOf(chatId);
    const [x, y] = all.filter((n) => n !== settler);
    const lb = await startBalancer(all.map((n) => n.port));
    try {
      const elsewhere = await tab(x!, chatId);
      const onDead = await tab(settler.url, chatId, 'u1', true);
      const advisor = await connect(y!, 'a1', 'advisor');
      const started = await call(advisor, 'chat:start', { chatId });
      expect(started.ok).to.equal(true);
      const recordId = started.meter.recordId;
      await waitFor(elsewhere, 'meter', (m) => m.durationSeconds >= 2, 6000);
      // the dead node's tab reconnects through the balancer from now on
      (onDead.io as unknown as { uri: string }).uri = lb.url;
      lb.backends = [x!.port, y!.port];
      const before = collect(elsewhere, 'meter');
      const killedAt = Date.now();
      settler.kill('SIGKILL');
      await settler.exited;
      const lastSeq = (before.at(-1)?.seq as number | undefined) ?? 0;
      // within three ticks plus the lease, the chat is settled again, seq going on from where it was
      const next = await waitFor(elsewhere, 'meter', (m) => m.seq > lastSeq && m.state === 'running' && Date.now() - killedAt > 50, 6000);
      expect(Date.now() - killedAt).to.be.below(3 * 200 + 1000 + 1500);
      expect(next.recordId).to.equal(recordId);
      // the dead node's tab is back on another node, in the same chat and record
      await eventually(() => onDead.connected, 8000);
      const again = await waitFor(onDead, 'meter', (m) => m.recordId === recordId && m.state === 'running', 6000);
      expect(again.seq).to.be.greaterThan(lastSeq);
      await waitFor(elsewhere, 'meter', (m) => m.durationSeconds >= next.durationSeconds + 2, 6000);
      // before the kill, across the takeover and after it: one sequence per chat
      const seqs = before.map((m) => m.seq as number);
      for (let i = 1; i < seqs.length; i++) expect(seqs[i], seqs.join(',')).to.be.greaterThan(seqs[i - 1]!);
      await endAndCheck(x!, chatId);
    } finally {
      await lb.close();
    }
  });

  it('stops the meter of a killed node\'s tabs when the node was last seen, not at their heartbeats\' lapse', async () => {
    // a 10 s heartbeat window: without the departed node's presence ended, the meter would run on for seconds
    const [a, b] = await start(2, { HEARTBEAT_INTERVAL_MS: '5000', HEARTBEAT_GRACE_MS: '5000' });
    const { chatId } = await given(a!);
    await tab(a!, chatId);
    const advisor = await connect(b!, 'a1', 'advisor');
    expect((await call(advisor, 'chat:start', { chatId })).ok).to.equal(true);
    await waitFor(advisor, 'meter', (m) => m.durationSeconds >= 2, 6000);
    const killedAt = Date.now();
    a!.kill('SIGKILL');
    await a!.exited;
    await waitFor(advisor, 'meter', (m) => m.state === 'away', 8000);
    // a node is taken for dead after three leases unseen (2.7 s here), well before the 10 s window
    expect(Date.now() - killedAt, 'away within three leases, a renewal and a tick').to.be.below(5000);
    const [r] = await db.ds.query(
      `SELECT r.duration, extract(epoch FROM c.started_at)::float8 * 1000 AS started FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE r.chat_id = $1`,
      [chatId],
    );
    const aliveSeconds = (killedAt - r.started) / 1000;
    // its settler may have billed on until the node was found gone: three leases (2.7 s) and a renewal after its death
    expect(r.duration, `billed ${r.duration} s; the node died ${aliveSeconds.toFixed(2)} s after the start`).to.be.within(
      Math.floor(aliveSeconds) - 1,
      Math.floor(aliveSeconds + 3.1),
    );
    await endAndCheck(b!, chatId, 99);
  });

  it('bills nothing twice when two nodes are forced to settle the same chats on every tick', async () => {
    const [a, b] = await start(2, { CHATMETER_TEST_SETTLE_UNOWNED: '1' });
    const chats = ['d1', 'd2', 'd3', 'd4'];
    for (const [i, id] of chats.entries()) await given(a!, id, `u${i}`, `a${i}`);
    for (const [i, id] of chats.entries()) {
      await tab(i % 2 ? a! : b!, id, `u${i}`);
      expect((await a!.api('POST', `/v1/chats/${id}/start`)).status).to.equal(200);
    }
    await new Promise((r) => setTimeout(r, 1000));
    // both really settle every chat: over 3 s (15 ticks of 200 ms) each node settles the four
    // chats about 60 times, where splitting them by lease would leave the two about 60 together
    const settled = () => Promise.all([a!, b!].map((n) => n.metric('chatmeter_settled_chats_total')));
    const before = await settled();
    await new Promise((r) => setTimeout(r, 3000));
    const after = await settled();
    for (const i of [0, 1]) expect(after[i]! - before[i]!, `chats settled by node ${i} in 3 s`).to.be.at.least(45);
    for (const id of chats) await endAndCheck(b!, id);
  });

  it('fences a settler stopped past its lease: another takes over, and once resumed it bills nothing and lets go', async () => {
    const { chatId, settler, x, user } = await runningAwayFromItsSettler(await start(3));
    settler.kill('SIGSTOP');
    try {
      // well past the 900 ms lease: the others take its shards over and go on
      const m = await waitFor(user, 'meter', (mm) => mm.state === 'running', 4000);
      const taken = await waitFor(user, 'meter', (mm) => mm.durationSeconds >= m.durationSeconds + 2, 6000);
      expect(taken.state).to.equal('running');
      const owner = await settlerOf(chatId);
      expect(owner.nodeId).to.not.equal(settler.nodeId);
    } finally {
      settler.kill('SIGCONT');
    }
    // resumed: its stale leases are refused or lapse, it commits nothing under them, and it rejoins the cluster
    await eventually(async () => (await settler.metric('chatmeter_lease_losses_total')) > 0, 8000, 100);
    await waitFor(user, 'meter', (mm) => mm.state === 'running', 4000);
    await new Promise((r) => setTimeout(r, 1500));
    const live = await settler.api('GET', '/readyz');
    expect(live.status).to.equal(200);
    await endAndCheck(x!, chatId);
  });

  it('bills exactly with one node\'s clock 5 s ahead and another\'s 5 s behind', async () => {
    const [ahead, behind] = await start(2, {}, [{ CHATMETER_TEST_CLOCK_SKEW_MS: '5000' }, { CHATMETER_TEST_CLOCK_SKEW_MS: '-5000' }]);
    // each node measured its offset to the database's clock
    expect(await ahead!.metric('chatmeter_clock_offset_seconds')).to.be.within(-5.3, -4.7);
    expect(await behind!.metric('chatmeter_clock_offset_seconds')).to.be.within(4.7, 5.3);
    const chats = ['k1', 'k2', 'k3', 'k4'];
    for (const [i, id] of chats.entries()) await given(ahead!, id, `u${i}`, `a${i}`);
    const tabs: ClientSocket[] = [];
    for (const [i, id] of chats.entries()) {
      tabs.push(await tab(i % 2 ? ahead! : behind!, id, `u${i}`));
      expect((await (i % 2 ? behind! : ahead!).api('POST', `/v1/chats/${id}/start`)).status).to.equal(200);
    }
    await new Promise((r) => setTimeout(r, 3000));
    // leaving stops each meter at that moment, whichever clock stamped it
    for (const t of tabs) t.disconnect();
    await new Promise((r) => setTimeout(r, 1500));
    for (const id of chats) {
      const [r] = await db.ds.query(
        `SELECT r.duration, extract(epoch FROM r.last_present_at - c.started_at)::float8 AS present, r.meter_state
           FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE r.chat_id = $1`,
        [id],
      );
      expect(r.meter_state, id).to.equal('away');
      expect(r.present, `${id}: presence measured on one clock`).to.be.within(2.5, 4.5);
      expect(r.duration, `${id}: billed ${r.duration} s for ${r.present} s present`).to.be.within(Math.floor(r.present) - 1, Math.floor(r.present));
    }
    await expectVerifyPasses();
  });

  it('drains on SIGTERM: exits 0, hands its leases over at once, and nothing is lost', async () => {
    // a lease far longer than the handover may take: a meter soon after the exit proves it was handed over, not expired
    const { chatId, settler, x, y, user } = await runningAwayFromItsSettler(await start(3, { CLUSTER_LEASE_MS: '10000' }));
    expect((await settler.api('GET', '/readyz')).status).to.equal(200);
    const asked = Date.now();
    settler.kill('SIGTERM');
    expect(await settler.exited).to.equal(0);
    expect(Date.now() - asked, 'drained in bounded time').to.be.below(10_000);
    const lines = settler.lines.map((l) => l.msg);
    expect(lines).to.include.members(['shutting down', 'left the cluster; leases handed over', 'shut down']);
    const exitedAt = Date.now();
    const [before] = await db.ds.query(`SELECT meter_seq FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
    await waitFor(user, 'meter', (m) => m.seq > Number(before.meter_seq) && m.state === 'running', 4000);
    expect(Date.now() - exitedAt, 'taken over long before the 10 s lease expired').to.be.below(3000);
    expect((await settlerOf(chatId)).nodeId).to.be.oneOf([x!.nodeId, y!.nodeId]);
    await new Promise((r) => setTimeout(r, 1000));
    await endAndCheck(y!, chatId);
  });

  it('survives its Postgres connections cut mid-chat: ticks fail, retry and resume, nothing half-written', async () => {
    const [a, b] = await start(2);
    const { chatId } = await given(a!);
    const user = await tab(a!, chatId);
    expect((await b!.api('POST', `/v1/chats/${chatId}/start`)).status).to.equal(200);
    await waitFor(user, 'meter', (m) => m.durationSeconds >= 2, 6000);
    const admin = new pg.Client({ connectionString: db.url! });
    await admin.connect();
    try {
      // every node's pooled connections, not this test's own
      const { rows } = await admin.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND application_name = 'chatmeter' AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
        [new URL(db.url!).pathname.slice(1)],
      );
      expect(rows.length).to.be.greaterThan(0);
    } finally {
      await admin.end();
    }
    const m = await eventually(async () => {
      const [r] = await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
      return r;
    });
    await waitFor(user, 'meter', (mm) => mm.durationSeconds >= m.duration + 2 && mm.state === 'running', 8000);
    for (const n of [a!, b!]) expect(n.child.exitCode, 'no crash').to.equal(null);
    await endAndCheck(b!, chatId);
  });
});

describe('many nodes through a Redis outage (real processes, a Redis of its own)', function () {
  this.timeout(90_000);
  let db: TestDb;
  let nodes: NodeProcess[] = [];
  let redis: ChildProcess | null = null;
  const sockets: ClientSocket[] = [];
  const timers: NodeJS.Timeout[] = [];
  const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;

  before(async function () {
    if (!process.env.DATABASE_URL || !hasRedisServer) return this.skip();
    db = await freshDatabase();
  });
  after(async () => {
    for (const t of timers) clearInterval(t);
    for (const s of sockets) s.close();
    await killAll(nodes);
    redis?.kill('SIGKILL');
    await db?.close();
  });

  it('keeps metering the users present on each node while Redis is down, and recovers by itself when it returns', async () => {
    const port = await freePort();
    const startRedis = () => spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const redisUp = () => spawnSync('redis-cli', ['-p', String(port), 'ping']).stdout?.toString().includes('PONG');
    redis = startRedis();
    await eventually(redisUp, 5000);
    const env = { DATABASE_URL: db.url!, REDIS_URL: `redis://127.0.0.1:${port}`, METER_TICK_MS: '200', CLUSTER_LEASE_MS: '900' };
    const a = await spawnNode(env);
    nodes.push(a);
    const b = await spawnNode(env);
    nodes.push(b);
    // a user on each node, each chat's advisor on the other node
    for (const [i, id] of ['r1', 'r2'].entries()) {
      await a.api('PUT', `/v1/users/u${i}`, { balance: '1000' });
      await a.api('PUT', `/v1/advisors/a${i}`, { ratePerMinute: '6', freeSeconds: 0 });
      await a.api('POST', '/v1/chats', { id, userId: `u${i}`, advisorId: `a${i}` });
    }
    const tabs: ClientSocket[] = [];
    const advisors: ClientSocket[] = [];
    for (const [i, id] of ['r1', 'r2'].entries()) {
      const home = i === 0 ? a : b;
      const away = i === 0 ? b : a;
      const { body: ut } = await home.api('POST', '/v1/tokens', { sub: `u${i}`, role: 'user' });
      const t = await connectWith(home.url, { token: ut.token });
      sockets.push(t);
      expect((await call(t, 'chat:join', { chatId: id })).ok).to.equal(true);
      timers.push(setInterval(() => t.emit('heartbeat', { chatId: id }), 100));
      tabs.push(t);
      const { body: at } = await away.api('POST', '/v1/tokens', { sub: `a${i}`, role: 'advisor' });
      const adv = await connectWith(away.url, { token: at.token });
      sockets.push(adv);
      expect((await call(adv, 'chat:start', { chatId: id })).ok).to.equal(true);
      advisors.push(adv);
    }
    for (const adv of advisors) await waitFor(adv, 'meter', (m) => m.durationSeconds >= 1, 5000);

    redis.kill('SIGKILL');
    await new Promise((res) => redis!.once('exit', res));
    const downAt = await db.ds.query(`SELECT chat_id, duration FROM conversation_time_records ORDER BY chat_id`);
    await new Promise((res) => setTimeout(res, 2500));
    for (const n of [a, b]) {
      expect(n.child.exitCode, 'no crash').to.equal(null);
      const ready = await n.api('GET', '/readyz');
      expect(ready.status, 'still serving its sockets').to.equal(200);
      expect(ready.body.checks.redis).to.equal(false);
      expect(ready.body.degraded).to.include('redis');
      expect(await n.metric('chatmeter_redis_up')).to.equal(0);
    }
    // each node meters the user present on it, settling in Postgres
    const during = await db.ds.query(`SELECT chat_id, duration FROM conversation_time_records ORDER BY chat_id`);
    for (const [i, r] of during.entries()) expect(r.duration, r.chat_id).to.be.at.least(downAt[i].duration + 1);

    // what the advisors receive from now on, with when it arrived
    const arrivals = advisors.map((adv) => {
      const seen: Array<{ serverTime: string; at: number }> = [];
      adv.on('meter', (m: { serverTime: string }) => seen.push({ serverTime: m.serverTime, at: Date.now() }));
      return seen;
    });
    redis = startRedis();
    await eventually(redisUp, 5000);
    for (const n of [a, b]) await eventually(async () => (await n.api('GET', '/readyz')).body.degraded?.length === 0, 15_000, 200);
    // the subscribers receive again: each advisor gets meters published by the other node's settler
    for (const adv of advisors) await waitFor(adv, 'meter', (m) => m.state === 'running', 8000);
    for (const [i, id] of ['r1', 'r2'].entries()) {
      const m = await waitFor(advisors[i]!, 'meter', () => true, 4000);
      await waitFor(advisors[i]!, 'meter', (mm) => mm.durationSeconds >= m.durationSeconds + 2, 6000);
      const ended = await a.api('POST', `/v1/chats/${id}/end`);
      expect(ended.status).to.equal(200);
      const [r] = await db.ds.query(
        `SELECT r.duration, extract(epoch FROM c.ended_at - c.started_at)::float8 AS span FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE r.chat_id = $1`,
        [id],
      );
      expect(r.duration, `${id}: billed ${r.duration} for ${r.span} s present`).to.be.within(Math.floor(r.span) - 1, Math.floor(r.span));
    }
    // publishes made while Redis was down were dropped, not queued: nothing stale arrived after it returned
    for (const seen of arrivals) {
      expect(seen.length).to.be.greaterThan(0);
      for (const m of seen) expect(m.at - Date.parse(m.serverTime), 'a fresh meter, not a queued one').to.be.below(1500);
    }
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  });
});
