/**
 * Presence shared by every node through Redis, keeping the PresenceStore contract
 * of LocalPresence (the same contract tests run against both). One hash per chat:
 * `since`, `closed` (where sockets that left stop counting), `hb` (latest
 * heartbeat) and one `s:{socketId}` field per joined socket with its heartbeat.
 * Every change is one Lua script, so concurrent nodes never interleave inside it.
 */
import type { RedisClientType } from 'redis';
import type { PresenceTiming, SharedPresence } from './presence.js';
import type { PresenceSpan } from './rules.js';

// until = max(closed, every socket's heartbeat + ttl); -1e300 stands for "never"
const UNTIL = `
local function until_of(h, ttl)
  local u = tonumber(h['closed'] or '-1e300')
  for k, v in pairs(h) do
    if string.sub(k, 1, 2) == 's:' then
      local t = tonumber(v) + ttl
      if t > u then u = t end
    end
  end
  return u
end
local function load(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end
`;

// KEYS[1] chat hash, KEYS[2] (optional) the node's socket set; ARGV: socket field, now, ttl, keep ms,
// joined-only flag, set member → 1 restarted, 0 not, -1 not joined
const TOUCH = `${UNTIL}
local key, sid, now, ttl, keep = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = load(key)
if ARGV[5] == '1' and h[sid] == nil then return -1 end
local restarted = 0
if h['since'] == nil then
  restarted = 1
  redis.call('HSET', key, 'since', ARGV[2])
elseif until_of(h, ttl) <= now then
  -- a new span: what came before it is a gap, never billed
  restarted = 1
  redis.call('HSET', key, 'since', ARGV[2])
  redis.call('HDEL', key, 'closed')
  for k, _ in pairs(h) do
    if string.sub(k, 1, 2) == 's:' then redis.call('HSET', key, k, '-1e300') end
  end
end
redis.call('HSET', key, sid, ARGV[2], 'hb', ARGV[2])
redis.call('PEXPIRE', key, keep)
if KEYS[2] then
  -- the node's own list of its sockets, so another node can end them if this one dies
  redis.call('SADD', KEYS[2], ARGV[6])
  redis.call('PEXPIRE', KEYS[2], keep)
end
return restarted
`;

// KEYS[1] chat hash, KEYS[2] (optional) the node's socket set; ARGV: socket field, now, ttl, set member
// → 1 when it was the last present socket
const LEAVE = `${UNTIL}
local key, sid, now, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[4]) end
local h = load(key)
if h[sid] == nil then return 0 end
local was = until_of(h, ttl) > now
local hb = tonumber(h[sid])
h[sid] = nil
redis.call('HDEL', key, sid)
local stop = math.min(now, hb + ttl)
local closed = tonumber(h['closed'] or '-1e300')
if stop > closed then
  h['closed'] = tostring(stop)
  redis.call('HSET', key, 'closed', string.format('%.0f', stop))
end
if was and until_of(h, ttl) <= now then return 1 end
return 0
`;

// KEYS: chat hashes → per key: since, closed, the latest socket heartbeat, hb (each as stored, or nil):
// what a span needs, without shipping (and decoding) every socket field of every chat
const SPANS = `
local out = {}
for _, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  local since, closed, latest, hb, latestN = false, false, false, false, nil
  for i = 1, #flat, 2 do
    local k, v = flat[i], flat[i + 1]
    if k == 'since' then since = v
    elseif k == 'closed' then closed = v
    elseif k == 'hb' then hb = v
    elseif string.sub(k, 1, 2) == 's:' then
      local n = tonumber(v)
      if latestN == nil or n > latestN then latestN, latest = n, v end
    end
  end
  out[#out + 1] = since
  out[#out + 1] = closed
  out[#out + 1] = latest
  out[#out + 1] = hb
end
return out
`;

/** Presence in Redis, shared by every node. */
// KEYS[1] chat hash, ARGV[1] as of (epoch ms): deleted when no socket field is left in it and its
// latest join or heartbeat ('hb') is not after ARGV[1]
const RELEASE = `
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 2) == 's:' then return 0 end
  if h[i] == 'hb' and tonumber(h[i + 1]) > tonumber(ARGV[1]) then return 0 end
end
return redis.call('DEL', KEYS[1])
`;

export class RedisPresence implements SharedPresence {
  private readonly ttl: number;

  /**
   * @param keepMs how long a chat's presence outlives its last change (covers the abandon timeout)
   * @param nodeId this node: its sockets are listed under it, so `releaseNode` can end them if it dies
   */
  constructor(
    private readonly redis: RedisClientType,
    timing: PresenceTiming,
    private readonly prefix: string,
    private readonly keepMs = 24 * 3600_000,
    private readonly nodeId: string | null = null,
  ) {
    this.ttl = timing.heartbeatIntervalMs + timing.heartbeatGraceMs;
  }

  private key(chatId: string): string {
    return `${this.prefix}:presence:${chatId}`;
  }

  private nodeKey(nodeId: string): string {
    return `${this.prefix}:presence-node:${nodeId}`;
  }

  private async touch(chatId: string, socketId: string, now: number, joinedOnly: boolean): Promise<number> {
    const r = await this.redis.eval(TOUCH, {
      keys: this.nodeId ? [this.key(chatId), this.nodeKey(this.nodeId)] : [this.key(chatId)],
      arguments: [`s:${socketId}`, String(now), String(this.ttl), String(this.keepMs), joinedOnly ? '1' : '0', `${chatId}\u0000${socketId}`],
    });
    return Number(r);
  }

  private async leaveAs(nodeId: string | null, chatId: string, socketId: string, now: number): Promise<boolean> {
    const r = await this.redis.eval(LEAVE, {
      keys: nodeId ? [this.key(chatId), this.nodeKey(nodeId)] : [this.key(chatId)],
      arguments: [`s:${socketId}`, String(now), String(this.ttl), `${chatId}\u0000${socketId}`],
    });
    return Number(r) === 1;
  }

  /**
   * Another node died at `at` without leaving: its sockets stop counting then, as if they
   * had disconnected (rule 5), instead of at their heartbeats' lapse. Returns the chats
   * whose presence it ended.
   */
  async releaseNode(nodeId: string, at: number): Promise<string[]> {
    const members = await this.redis.sMembers(this.nodeKey(nodeId));
    const ended = await Promise.all(
      members.map(async (m) => {
        const [chatId, socketId] = m.split('\u0000') as [string, string];
        return (await this.leaveAs(nodeId, chatId, socketId, at)) ? chatId : null;
      }),
    );
    await this.redis.del(this.nodeKey(nodeId));
    return [...new Set(ended.filter((c): c is string => c !== null))];
  }

  async join(chatId: string, socketId: string, now: number): Promise<boolean> {
    return (await this.touch(chatId, socketId, now, false)) === 1;
  }

  async heartbeat(chatId: string, socketId: string, now: number): Promise<boolean | null> {
    const r = await this.touch(chatId, socketId, now, true);
    return r === -1 ? null : r === 1;
  }

  async leave(chatId: string, socketId: string, now: number): Promise<boolean> {
    return this.leaveAs(this.nodeId, chatId, socketId, now);
  }

  async span(chatId: string): Promise<PresenceSpan | null> {
    return (await this.spans([chatId])).get(chatId) ?? null;
  }

  async spans(chatIds: string[]): Promise<Map<string, PresenceSpan | null>> {
    const spans = new Map<string, PresenceSpan | null>();
    if (!chatIds.length) return spans;
    const flat = (await this.redis.eval(SPANS, { keys: chatIds.map((id) => this.key(id)) })) as Array<string | null>;
    chatIds.forEach((id, i) => {
      const [since, closed, latest, hb] = flat.slice(i * 4, i * 4 + 4);
      spans.set(
        id,
        since == null
          ? null
          : {
              since: Number(since),
              until: Math.max(closed == null ? -Infinity : Number(closed), latest == null ? -Infinity : Number(latest) + this.ttl),
              lastHeartbeatAt: hb == null ? null : Number(hb),
            },
      );
    });
    return spans;
  }

  forget(chatId: string): void {
    // best effort: the key expires anyway
    this.redis.del(this.key(chatId)).catch(() => undefined);
  }

  async release(chatId: string, asOf: number): Promise<void> {
    await this.redis.eval(RELEASE, { keys: [this.key(chatId)], arguments: [String(asOf)] });
  }
}
