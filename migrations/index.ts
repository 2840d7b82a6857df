import { Initial1764300000000 } from './1764300000000-Initial.js';
import { Cluster1764400000000 } from './1764400000000-Cluster.js';
import { Fillfactor1764500000000 } from './1764500000000-Fillfactor.js';
import { UserLowBalance1764600000000 } from './1764600000000-UserLowBalance.js';
import { Webhooks1764700000000 } from './1764700000000-Webhooks.js';
import { LedgerHead1764800000000 } from './1764800000000-LedgerHead.js';
import { AdvisorOpenChats1764900000000 } from './1764900000000-AdvisorOpenChats.js';

/** Every migration in order, listed explicitly (no globs) so `.ts` and built `.js` agree. */
export const migrations = [Initial1764300000000, Cluster1764400000000, Fillfactor1764500000000, UserLowBalance1764600000000, Webhooks1764700000000, LedgerHead1764800000000, AdvisorOpenChats1764900000000];
