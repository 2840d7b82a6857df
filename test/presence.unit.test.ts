import { LocalPresence, type PresenceTiming } from '../server/metering/presence.js';
import { presenceContract } from './support/presence-contract.js';

const timing: PresenceTiming = { heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 };

presenceContract('LocalPresence', async () => new LocalPresence(timing));
