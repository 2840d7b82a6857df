/**
 * The faults, one row each, in the order they run. Each starts on three healthy
 * nodes (the runner respawns what a previous row killed) and leaves them so.
 */
import { type Cluster, type Node, TIMING } from './cluster.js';
import { type FaultContext, type Scenario, WINDOW_MS, sleep } from './runner.js';
import { tcpPortsOf } from './procfs.js';
import type { Tab } from './tab.js';

/** How long a node stays stopped: four leases, past its leases and its membership (three leases). */
const STOP_MS = 4 * TIMING.leaseMs;
/** How long the test database refuses connections: within three leases (a node's membership), and past them. */
const PG_BLIP_MS = 3000;
const PG_DOWN_MS = 6000;
const REDIS_DOWN_MS = 5000;
const REDIS_DELAY_MS = 200;
const REDIS_SLOW_MS = 6000;
const SKEW_MS = 8000;

/**
 * The live node settling most of the row's chats, the chats a fault on it touches, its
 * tabs, and the tabs on other nodes of the chats it settles.
 */
function busiest(ctx: FaultContext): { node: Node; affected: Set<string>; settles: number; onIt: Tab[]; others: Tab[] } {
  const count = (n: Node) => ctx.chatIds.filter((id) => ctx.settlers.get(id) === n.proc.nodeId).length;
  const node = [...ctx.h.live].sort((a, b) => count(b) - count(a))[0]!;
  const onIt = ctx.tabs.filter((t) => t.node === node.label);
  const affected = new Set([...ctx.chatIds.filter((id) => ctx.settlers.get(id) === node.proc.nodeId), ...onIt.map((t) => t.chatId)]);
  return { node, affected, settles: count(node), onIt, others: elsewhere(ctx, node) };
}

/**
 * Polls the node's own backends until one is inside a billing transaction (between its
 * START TRANSACTION and its COMMIT, or on a billing table); describes it (null: none within `ms`).
 */
async function inTransaction(h: Cluster, node: Node, ms: number): Promise<string | null> {
  const ports = tcpPortsOf(node.proc.child.pid!);
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const rows: Array<{ client_port: number; state: string; query: string; age_ms: number }> = await h.ds.query(
      `SELECT client_port, state, left(regexp_replace(query, '\\s+', ' ', 'g'), 60) AS query,
              (extract(epoch FROM clock_timestamp() - xact_start) * 1000)::float8 AS age_ms
         FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'chatmeter' AND xact_start IS NOT NULL
          AND (state = 'idle in transaction' OR query ~* '^(START TRANSACTION|COMMIT)|conversation_time_records|ledger_entries|free_time_allowances')`,
    );
    const mine = rows.find((r) => ports.has(r.client_port));
    if (mine) return `${mine.state}, ${Math.round(mine.age_ms)} ms into it, at "${mine.query}..."`;
  }
  return null;
}

/** The tabs on other nodes of the chats `node` settled: they show how soon another node took its chats over. */
function elsewhere(ctx: FaultContext, node: Node): Tab[] {
  return ctx.tabs.filter((t) => ctx.settlers.get(t.chatId) === node.proc.nodeId && t.node !== null && t.node !== node.label);
}

const everyChat = (ctx: FaultContext) => new Set(ctx.chatIds);

const kill9: Scenario = {
  key: 'kill9',
  title: 'kill -9 of the settling node',
  chats: 18,
  split: 9,
  preferSettler: (h) => h.live[0]!,
  async inject(ctx) {
    const { node, affected, settles, onIt, others } = busiest(ctx);
    // mid-commit when it can: the moment one of its database backends is inside a transaction
    const caught = await inTransaction(ctx.h, node, 3000);
    const at = Date.now();
    await ctx.h.kill(node, 'SIGKILL');
    const seen = (await ctx.h.lastSeen(node.proc.nodeId)) ?? at - TIMING.leaseMs;
    // its tabs: present (or not) from its last renewal until their heartbeat window lapsed
    for (const t of onIt) t.overrides.push({ from: Math.min(seen, at), to: at + WINDOW_MS, kind: 'uncertain' });
    ctx.note(`killed ${node.label}, settler of ${settles} chats, holding ${onIt.length} tabs; its last renewal ${Math.round(at - seen)} ms before the kill`);
    ctx.note(caught ? `killed inside a transaction of its own (${caught})` : 'no transaction of its own caught open within 3 s: killed between transactions');
    return { affected, end: at, handovers: 1, takeover: { since: at, tabs: others } };
  },
};

const sigstop: Scenario = {
  key: 'sigstop',
  title: `SIGSTOP ${STOP_MS / 1000} s (past its lease), SIGCONT`,
  chats: 18,
  split: 9,
  preferSettler: (h) => h.live[0]!,
  async inject(ctx) {
    const { node, affected, settles, onIt, others } = busiest(ctx);
    const at = Date.now();
    ctx.h.pause(node);
    await sleep(300);
    const seen = (await ctx.h.lastSeen(node.proc.nodeId)) ?? at - TIMING.leaseMs;
    await sleep(STOP_MS - 300);
    const cont = Date.now();
    ctx.h.resume(node);
    for (const t of onIt) {
      t.overrides.push({ from: Math.min(seen, at), to: at + WINDOW_MS, kind: 'uncertain' });
      // no heartbeat reached a running node: nothing of this may be billed on its account
      t.overrides.push({ from: at + WINDOW_MS, to: cont, kind: 'absent' });
    }
    ctx.note(`stopped ${node.label}, settler of ${settles} chats, holding ${onIt.length} tabs, for ${cont - at} ms; its last renewal ${Math.round(at - seen)} ms before the stop`);
    return { affected, end: cont, handovers: 2, takeover: { since: at, tabs: others } };
  },
};

/** Cuts the test database's connections: the nodes' only (`application_name`), or all of them. */
async function cut(h: Cluster, all: boolean): Promise<number> {
  const rows = await h.admin(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend' ${all ? '' : `AND application_name = 'chatmeter'`}`,
    [h.dbName],
  );
  return rows.length;
}

const pgTerminate: Scenario = {
  key: 'pgcut',
  title: 'pg_terminate_backend of every node connection',
  chats: 18,
  split: 9,
  async inject(ctx) {
    const n = await cut(ctx.h, false);
    const end = Date.now();
    ctx.note(`${n} node connections terminated`);
    return { affected: everyChat(ctx), end, handovers: 1 };
  },
};

/** The test database refuses connections for `ms` and loses those it had, as in a restart of its server. */
function pgDown(key: string, ms: number, why: string): Scenario {
  return {
    key,
    title: `Postgres down ${ms / 1000} s (${why})`,
    chats: 18,
    split: 9,
    async inject(ctx) {
      // the shared server is never restarted: only its test database refuses connections and loses all it had
      await ctx.h.admin(`ALTER DATABASE ${ctx.h.dbName} ALLOW_CONNECTIONS false`);
      let n = 0;
      try {
        n = await cut(ctx.h, true);
        await sleep(ms);
      } finally {
        await ctx.h.admin(`ALTER DATABASE ${ctx.h.dbName} ALLOW_CONNECTIONS true`);
      }
      const end = Date.now();
      ctx.note(`${n} connections terminated, new ones refused for ${ms} ms`);
      return { affected: everyChat(ctx), end, handovers: 1 };
    },
  };
}

const redisDown: Scenario = {
  key: 'redisdown',
  title: `Redis down ${REDIS_DOWN_MS / 1000} s (killed, started empty)`,
  chats: 18,
  split: 9,
  async inject(ctx) {
    await ctx.h.redis.stop();
    await sleep(REDIS_DOWN_MS);
    await ctx.h.redis.start();
    // presence goes local when Redis goes and shared again when it returns: two handovers
    return { affected: everyChat(ctx), end: Date.now(), handovers: 2 };
  },
};

const redisSlow: Scenario = {
  key: 'redisslow',
  title: `Redis slow: +${REDIS_DELAY_MS} ms each way for ${REDIS_SLOW_MS / 1000} s`,
  chats: 18,
  split: 9,
  async inject(ctx) {
    ctx.h.proxy.setDelay(REDIS_DELAY_MS);
    try {
      await sleep(REDIS_SLOW_MS);
    } finally {
      ctx.h.proxy.setDelay(0);
    }
    return { affected: everyChat(ctx), end: Date.now(), handovers: 1 };
  },
};

let skewed: Node | null = null;
const clockSkew: Scenario = {
  key: 'skew',
  title: `a fourth node's clock ${SKEW_MS / 1000} s ahead`,
  chats: 24,
  split: 12,
  preferSettler: () => skewed!,
  async prepare(h) {
    skewed = await h.spawn({ CHATMETER_TEST_CLOCK_SKEW_MS: String(SKEW_MS) });
    await h.waitSpread();
  },
  async inject(ctx) {
    const node = skewed!;
    const affected = new Set([
      ...ctx.chatIds.filter((id) => ctx.settlers.get(id) === node.proc.nodeId),
      ...ctx.tabs.filter((t) => t.node === node.label).map((t) => t.chatId),
    ]);
    const settles = ctx.chatIds.filter((id) => ctx.settlers.get(id) === node.proc.nodeId).length;
    await sleep(3000);
    // the single tabs leave and come back through the balancer: presence stamped on both clocks
    const single = ctx.tabs.filter((t) => ctx.tabs.filter((o) => o.chatId === t.chatId).length === 1);
    for (const t of single) t.drop();
    await sleep(5000);
    ctx.note(`${node.label} +${SKEW_MS} ms settles ${settles} chats; ${single.length} single tabs dropped and rejoined through the balancer`);
    return { affected, end: null, handovers: 0 };
  },
  async cleanup(h) {
    const node = skewed;
    skewed = null;
    if (!node) return;
    // drained as in a rolling deploy: it must exit 0
    const code = await h.kill(node, 'SIGTERM');
    await h.waitSpread();
    return `${node.label} drained with SIGTERM: exit ${code}`;
  },
};

const storm: Scenario = {
  key: 'storm',
  title: 'reconnect storm: every tab dropped at once',
  chats: 120,
  split: 120,
  balanced: true,
  async inject(ctx) {
    const at = Date.now();
    for (const t of ctx.tabs) t.drop();
    ctx.note(`${ctx.tabs.length} tabs dropped at once, reconnecting through the balancer`);
    return { affected: everyChat(ctx), end: at, handovers: 0 };
  },
};

export const SCENARIOS: Scenario[] = [
  kill9,
  sigstop,
  pgTerminate,
  pgDown('pgblip', PG_BLIP_MS, 'simulated restart, within three leases'),
  pgDown('pgdown', PG_DOWN_MS, 'simulated restart, past three leases'),
  redisDown,
  redisSlow,
  clockSkew,
  storm,
];
