/**
 * Client tokens: HS256 JWTs with `sub`, `role` and `exp`, verified by fast-jwt with
 * the algorithm pinned, so `alg: none` and other algorithms are refused outright.
 *
 * fast-jwt checks the HMAC with node:crypto on the calling thread (31-62 us of CPU a
 * new token here), where WebCrypto (jose) sends each check to the thread pool and
 * back (154-192 us; 8-11% of a node's CPU early in a connect storm). Its cache of verified
 * tokens, keyed by a hash of the token and bounded by the token's `exp`, makes a
 * reconnect with the same token (every tab after a proxy restart) a lookup.
 */
import { createSigner, createVerifier } from 'fast-jwt';
import { z } from 'zod';
import type { Role } from '../client-sdk/src/protocol.js';
import { ID_PATTERN } from './validation.js';

/** Who a verified token speaks for. */
export interface Principal {
  sub: string;
  role: Role;
}

// the library checks a number for exp and iat only where it compares them: 1e999 (Infinity) would be a
// token that never expires, and an iat of "yesterday" a token nobody signed as such
const claims = z.object({
  sub: z.string().regex(ID_PATTERN),
  role: z.enum(['user', 'advisor']),
  exp: z.number().finite(),
  iat: z.number().finite().optional(),
});

/** Verified tokens remembered (about 300 B each): a node's sockets, with room for the tokens they reconnect with. */
const VERIFIED_CACHE_SIZE = 20_000;

/** Signs and verifies client tokens with one secret. */
export class Tokens {
  private readonly signer: (payload: Record<string, unknown>) => string;
  private readonly verifier: (token: string) => Record<string, unknown>;

  constructor(secret: string) {
    this.signer = createSigner({ key: secret, algorithm: 'HS256' });
    this.verifier = createVerifier({ key: secret, algorithms: ['HS256'], requiredClaims: ['exp', 'sub'], cache: VERIFIED_CACHE_SIZE });
  }

  /** A token for `sub` in `role`, valid for `ttlSeconds` from `now` (epoch ms). */
  async sign(p: Principal, ttlSeconds: number, now: number): Promise<{ token: string; expiresAt: string }> {
    const iat = Math.floor(now / 1000);
    const exp = iat + ttlSeconds;
    const token = this.signer({ sub: p.sub, role: p.role, iat, exp });
    return { token, expiresAt: new Date(exp * 1000).toISOString() };
  }

  /** The principal of a valid token and when it expires (epoch ms), or null for a missing, expired, forged or malformed one. */
  async verify(token: unknown): Promise<(Principal & { expiresAt: number }) | null> {
    if (typeof token !== 'string' || token.length === 0 || token.length > 4096) return null;
    try {
      const parsed = claims.safeParse(this.verifier(token));
      if (!parsed.success) return null;
      const { sub, role, exp } = parsed.data;
      return { sub, role, expiresAt: exp * 1000 };
    } catch {
      return null;
    }
  }
}
