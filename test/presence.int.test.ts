import { randomBytes } from 'node:crypto';
import { createClient, type RedisClientType } from 'redis';
import { RedisPresence } from '../server/metering/redis-presence.js';
import { presenceContract } from './support/presence-contract.js';

/** The presence contract against real Redis (when REDIS_URL is set), one key prefix per test. */
describe('RedisPresence (real Redis)', function () {
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

  presenceContract('RedisPresence', async () =>
    new RedisPresence(redis!, { heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 }, `cm-test-${randomBytes(4).toString('hex')}`, 60_000),
  );
});
