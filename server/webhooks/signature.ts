import { createHmac, timingSafeEqual } from 'node:crypto';

/** The header every delivery carries. */
export const SIGNATURE_HEADER = 'Chatmeter-Signature';

/** `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, signed afresh at each attempt. */
export function sign(secret: string, body: string, nowMs: number): string {
  const t = Math.floor(nowMs / 1000);
  return `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`;
}

/**
 * What a receiver does (the README shows it): recompute the HMAC over the raw body, compare in
 * constant time, and refuse a `t` further than `toleranceSeconds` from now (a replayed request).
 */
export function verify(secret: string, body: string, header: string | undefined, nowMs: number, toleranceSeconds = 300): boolean {
  const parts = Object.fromEntries((header ?? '').split(',').map((p) => p.split('=', 2) as [string, string]));
  const t = Number(parts.t);
  if (!Number.isInteger(t) || !parts.v1 || Math.abs(nowMs / 1000 - t) > toleranceSeconds) return false;
  const expected = createHmac('sha256', secret).update(`${t}.${body}`).digest();
  const given = Buffer.from(parts.v1, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}
