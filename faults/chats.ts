/**
 * A row's chats over the HTTP API and its tabs: users with plenty of credit,
 * advisors at three known rates, one chat each, tabs placed on the nodes in turn
 * (or through the balancer); and what the database says of them afterwards.
 */
import { shardOf } from '../server/cluster/shards.js';
import { Tokens } from '../server/tokens.js';
import { FAST_ENV } from '../test/support/server.js';
import { type Cluster, type Node, TIMING } from './cluster.js';
import type { ChatRow } from './measure.js';
import { Tab } from './tab.js';

/** Rates of the chats, in turn: paid from the first second; 10 free seconds then paid; free of charge (rate 0). */
const PROFILES = [
  { ratePerMinute: '6', freeSeconds: 0 },
  { ratePerMinute: '12', freeSeconds: 10 },
  { ratePerMinute: '0', freeSeconds: 0 },
];

/** How often a tab heartbeats: half the heartbeat interval, as a client does. */
export const HEARTBEAT_EVERY_MS = TIMING.heartbeatIntervalMs / 2;

const tokens = new Tokens(FAST_ENV.CHATMETER_JWT_SECRET);

export interface Chat {
  id: string;
  userId: string;
  advisorId: string;
}

/**
 * `n` chats named after `base`, created with their user and advisor. With `prefer`, two
 * chats in three get ids in shards that node holds now, so it settles them.
 */
export async function createChats(h: Cluster, base: string, n: number, prefer: Node | null): Promise<Chat[]> {
  const owners = prefer ? await h.shardOwners() : new Map<number, string | null>();
  const chats = Array.from({ length: n }, (_, i) => {
    let id = `${base}-c${i}`;
    if (prefer && i % 3 !== 2) {
      for (let k = 1; k < 10_000; k++) {
        if (owners.get(shardOf(`${base}-c${i}x${k}`)) !== prefer.proc.nodeId) continue;
        id = `${base}-c${i}x${k}`;
        break;
      }
    }
    return { id, userId: `${base}-u${i}`, advisorId: `${base}-a${i}`, profile: PROFILES[i % PROFILES.length]! };
  });
  await inBatches(chats, 16, async (c) => {
    await ok(h.api('PUT', `/v1/users/${c.userId}`, { balance: '1000' }));
    await ok(h.api('PUT', `/v1/advisors/${c.advisorId}`, c.profile));
    await ok(h.api('POST', '/v1/chats', { id: c.id, userId: c.userId, advisorId: c.advisorId }));
  });
  return chats.map(({ id, userId, advisorId }) => ({ id, userId, advisorId }));
}

/**
 * A tab for every chat, two on two nodes for the first `split` chats; placed on `nodes`
 * in turn, or all through the balancer with `balanced`.
 */
export function openTabs(h: Cluster, chats: Chat[], split: number, nodes: Node[], balanced: boolean): Promise<Tab[]> {
  const specs = chats.flatMap((c, i) => (i < split ? [i, i + 1] : [i]).map((n) => ({ c, node: nodes[n % nodes.length]! })));
  return inBatches(specs, 20, async ({ c, node }) =>
    Tab.open({
      url: balanced ? h.lb.url : node.proc.url,
      via: h.lb.url,
      token: (await tokens.sign({ sub: c.userId, role: 'user' }, 3600, Date.now())).token,
      chatId: c.id,
      userId: c.userId,
      node: balanced ? null : node.label,
      heartbeatEveryMs: HEARTBEAT_EVERY_MS,
    }),
  );
}

export function startChats(h: Cluster, chats: Chat[]): Promise<void[]> {
  return inBatches(chats, 16, (c) => ok(h.api('POST', `/v1/chats/${c.id}/start`)));
}

/** Ends every chat over HTTP (retrying a node that is not answering yet). */
export function endChats(h: Cluster, chats: Chat[]): Promise<void[]> {
  return inBatches(chats, 16, (c) => retry(() => ok(h.api('POST', `/v1/chats/${c.id}/end`))));
}

/** Billed seconds of each chat now. */
export async function durations(h: Cluster, ids: string[]): Promise<Map<string, number>> {
  const rows: Array<{ chat_id: string; duration: number }> = await h.ds.query(
    `SELECT chat_id, duration FROM conversation_time_records WHERE chat_id = ANY($1)`,
    [ids],
  );
  return new Map(rows.map((r) => [r.chat_id, r.duration]));
}

/** The chats with their active span and billed seconds, as the database has them. */
export async function chatRows(h: Cluster, ids: string[]): Promise<ChatRow[]> {
  const rows: Array<{ id: string; started: number; ended: number | null; end_reason: string | null; duration: number }> = await h.ds.query(
    `SELECT c.id, (extract(epoch FROM c.started_at) * 1000)::float8 AS started, (extract(epoch FROM c.ended_at) * 1000)::float8 AS ended,
            c.end_reason, r.duration
       FROM chats c JOIN conversation_time_records r ON r.chat_id = c.id WHERE c.id = ANY($1) ORDER BY c.id`,
    [ids],
  );
  return rows.map((r) => ({
    id: r.id,
    startedAt: Number(r.started),
    endedAt: r.ended === null ? null : Number(r.ended),
    endReason: r.end_reason,
    billed: r.duration,
  }));
}

async function ok(p: Promise<{ status: number; body: unknown }>): Promise<void> {
  const res = await p;
  if (res.status >= 300) throw new Error(`HTTP ${res.status}: ${JSON.stringify(res.body).slice(0, 300)}`);
}

async function retry(fn: () => Promise<void>, attempts = 10): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function inBatches<T, R>(items: T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += size) out.push(...(await Promise.all(items.slice(i, i + size).map(fn))));
  return out;
}
