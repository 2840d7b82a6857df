import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * True when an `Authorization` header carries `Bearer <secret>` (the scheme is case-insensitive,
 * RFC 7235). Compared as hashes in constant time: neither the secret's length nor its bytes leak.
 */
export function bearerMatches(header: string | undefined, secret: string): boolean {
  const m = /^Bearer (.+)$/i.exec(header ?? '');
  const given = createHash('sha256').update(m?.[1] ?? '').digest();
  return Boolean(m) && timingSafeEqual(given, createHash('sha256').update(secret).digest());
}
