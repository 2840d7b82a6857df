import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { pino } from 'pino';
import { createClient, type RedisClientType } from 'redis';
import { MirroredPresence } from '../server/metering/mirrored-presence.js';
import { LocalPresence } from '../server/metering/presence.js';
import { RedisPresence } from '../server/metering/redis-presence.js';
import { presenceContract } from './support/presence-contract.js';

const timing = { heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 };
const prefix = () => `cm-test-${randomBytes(4).toString('hex')}`;

/** The presence contract against real Redis (when REDIS_URL is set), one key prefix per test. */
describe('shared presence (real Redis)', function () {
  let redis: RedisClientType | null = null;
  before(async function () {
    if (!process.env.REDIS_URL) return this.skip();
    redis = createClient({ url: process.env.REDIS_URL });
    redis.on('error', () => {});
    await redis.connect();
  });
  after(async () => {
    await redis?.close();
  });

  presenceContract('RedisPresence', async () => new RedisPresence(redis!, timing, prefix(), 60_000));

  presenceContract('MirroredPresence (Redis up)', async () => {
    const p = new MirroredPresence(new LocalPresence(timing), new RedisPresence(redis!, timing, prefix(), 60_000), () => true, pino({ level: 'silent' }));
    await p.resync(() => 0);
    return p;
  });

  describe('MirroredPresence through a Redis outage', () => {
    /** Two nodes' presence over one Redis key space, with Redis reachable while `redisUp.value`. */
    async function twoNodes() {
      const redisUp = { value: true };
      const key = prefix();
      const node = () =>
        new MirroredPresence(new LocalPresence(timing), new RedisPresence(redis!, timing, key, 60_000), () => redisUp.value, pino({ level: 'silent' }));
      const [nodeA, nodeB] = [node(), node()];
      await nodeA.resync(() => 0);
      await nodeB.resync(() => 0);
      return { redisUp, nodeA, nodeB };
    }

    it('answers from this node\'s sockets while Redis is down, and copies them back when it returns', async () => {
      const { redisUp, nodeA, nodeB } = await twoNodes();
      // b sees a's socket through Redis
      await nodeA.join('c', 's-a', 1000);
      expect(await nodeB.span('c', 1000)).to.deep.include({ since: 1000 });
      expect(nodeB.degraded).to.equal(false);

      redisUp.value = false;
      nodeA.lost();
      nodeB.lost();
      expect(nodeA.degraded).to.equal(true);
      // a socket joins b while Redis is down: b knows it, a (its own sockets only) does not
      await nodeB.join('d', 's-b', 2000);
      expect(nodeB.presentHere('d', 2000)).to.equal(true);
      expect(await nodeA.span('d', 2000)).to.equal(null);
      expect((await nodeB.span('d', 2000))!.since).to.equal(2000);

      redisUp.value = true;
      await nodeA.resync(() => 3000);
      await nodeB.resync(() => 3000);
      // what b's sockets did during the outage is in Redis again, for every node
      expect(await nodeA.span('d', 3000)).to.deep.include({ since: 2000, until: 17_000 });
      expect(nodeA.degraded).to.equal(false);
    });

    it('tells Redis when it returns of the sockets that left while it was down, at the instant they left', async () => {
      // found by the simulation (docs/RELIABILITY.md): the leave never reached Redis, whose stale socket
      // kept the user present until its heartbeat lapsed, and the chat was billed for seconds after the user left
      const { redisUp, nodeA, nodeB } = await twoNodes();
      await nodeA.join('c', 's1', 1000);
      redisUp.value = false;
      nodeA.lost();
      nodeB.lost();
      expect(await nodeA.leave('c', 's1', 2000)).to.equal(true);
      // and a socket that left and came back meanwhile is present again from its return
      await nodeA.join('d', 's2', 1000);
      await nodeA.leave('d', 's2', 1500);
      await nodeA.join('d', 's2', 2500);
      redisUp.value = true;
      await nodeA.resync(() => 3000);
      await nodeB.resync(() => 3000);
      expect((await nodeB.span('c', 3000))!.until, 'the user left at 2 s').to.equal(2000);
      expect(await nodeB.span('d', 3000)).to.deep.include({ since: 2500, until: 17_500 });
    });

    it('ends this node\'s presence in Redis when it goes away (a drain)', async () => {
      const { nodeA: draining, nodeB: other } = await twoNodes();
      await draining.join('c', 's1', 1000);
      await draining.releaseAll(4000);
      expect((await other.span('c', 4000))!.until).to.equal(4000);
    });
  });
});
