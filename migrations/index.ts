import { Initial1764300000000 } from './1764300000000-Initial.js';
import { Cluster1764400000000 } from './1764400000000-Cluster.js';

/** Every migration in order, listed explicitly (no globs) so `.ts` and built `.js` agree. */
export const migrations = [Initial1764300000000, Cluster1764400000000];
