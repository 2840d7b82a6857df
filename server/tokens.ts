/**
 * Client tokens: HS256 JWTs with `sub`, `role` and `exp`, verified by jose with the
 * algorithm pinned, so `alg: none` and other algorithms are refused outright.
 */
import { type KeyObject, createSecretKey } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';
import { z } from 'zod';
import type { Role } from '../client-sdk/src/protocol.js';
import { ID_PATTERN } from './validation.js';

/** Who a verified token speaks for. */
export interface Principal {
  sub: string;
  role: Role;
}

const claims = z.object({ sub: z.string().regex(ID_PATTERN), role: z.enum(['user', 'advisor']) });

/** Signs and verifies client tokens with one secret. */
export class Tokens {
  // a KeyObject made once: given raw bytes, jose imports the key again on every verification,
  // which was 8% of a node's CPU through a reconnect storm
  private readonly key: KeyObject;

  constructor(secret: string) {
    this.key = createSecretKey(Buffer.from(secret, 'utf8'));
  }

  /** A token for `sub` in `role`, valid for `ttlSeconds` from `now` (epoch ms). */
  async sign(p: Principal, ttlSeconds: number, now: number): Promise<{ token: string; expiresAt: string }> {
    const iat = Math.floor(now / 1000);
    const exp = iat + ttlSeconds;
    const token = await new SignJWT({ role: p.role })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(p.sub)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .sign(this.key);
    return { token, expiresAt: new Date(exp * 1000).toISOString() };
  }

  /** The principal of a valid token and when it expires (epoch ms), or null for a missing, expired, forged or malformed one. */
  async verify(token: unknown): Promise<(Principal & { expiresAt: number }) | null> {
    if (typeof token !== 'string' || token.length === 0 || token.length > 4096) return null;
    try {
      const { payload } = await jwtVerify(token, this.key, { algorithms: ['HS256'], requiredClaims: ['exp', 'sub'] });
      const parsed = claims.safeParse(payload);
      return parsed.success ? { ...parsed.data, expiresAt: (payload.exp as number) * 1000 } : null;
    } catch {
      return null;
    }
  }
}
