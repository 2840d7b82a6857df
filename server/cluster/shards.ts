/**
 * Active chats are hashed into a fixed number of settlement shards (the rows of
 * `settlement_shards`); a node settles on its schedule the chats of the shards it
 * holds a lease on. Rendezvous hashing over the live nodes says which node should
 * hold which shard, so every node computes the same answer from the same view.
 */

/** Shards in `settlement_shards` (seeded by the Cluster migration; changing it needs a migration). */
export const SHARDS = 64;

/** A stable bucket for a string (FNV-1a). */
export function bucketOf(key: string, buckets: number): number {
  return fnv1a(key) % buckets;
}

/** The shard of a chat. */
export function shardOf(chatId: string): number {
  return bucketOf(chatId, SHARDS);
}

/**
 * The node that should hold `shard` among `nodes` (highest random weight): when a
 * node joins or leaves, only the shards it wins or held move.
 */
export function ownerOf(shard: number, nodes: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestScore = -1;
  for (const node of nodes) {
    const score = mix(fnv1a(node) ^ Math.imul(shard + 1, 0x9e3779b1));
    if (score > bestScore || (score === bestScore && best !== undefined && node < best)) {
      best = node;
      bestScore = score;
    }
  }
  return best;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** A 32-bit finalizer (murmur3's), so nearby inputs score far apart. */
function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
