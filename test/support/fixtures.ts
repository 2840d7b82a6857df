import type { DataSource } from 'typeorm';
import { Accounts } from '../../server/accounts.js';
import { SettlementService } from '../../server/metering/settlement.js';
import type { Policy, PresenceSpan } from '../../server/metering/rules.js';

/** The engine's default test policy: long abandon timeout, low-balance threshold 60 s. */
export const testPolicy: Policy = { abandonTimeoutMs: 120_000, lowBalanceSeconds: 60 };

/** Accounts and settlement over one database, with the defaults of SPEC 4. */
export function services(ds: DataSource, policy: Policy = testPolicy) {
  return { accounts: new Accounts(ds, { freeTimeSeconds: 180 }), engine: new SettlementService(ds, policy) };
}

/** A user present from `since` with a heartbeat at `heartbeat` (default: since) and 15 s of grace after it. */
export function present(since: number, heartbeat = since, graceMs = 15_000): PresenceSpan {
  return { since, until: heartbeat + graceMs, lastHeartbeatAt: heartbeat };
}

/** A user whose last socket left at `leftAt`, having been present since `since`. */
export function left(since: number, leftAt: number): PresenceSpan {
  return { since, until: leftAt, lastHeartbeatAt: since };
}

/** Seconds to ms from an origin, to write instants in tests as `at(90)`. */
export const T0 = Date.parse('2026-01-01T00:00:00.000Z');
export const at = (seconds: number) => T0 + seconds * 1000;
