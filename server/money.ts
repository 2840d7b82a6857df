/**
 * Exact money: amounts are integers of 1/10000 credit as `bigint`, converted to and
 * from decimal strings only at the edges. No amount ever passes through a JS float.
 */

/** Units per credit (4 fraction digits). */
export const UNITS_PER_CREDIT = 10_000n;

/** What the API takes: 15 integer digits, at most 4 fraction digits. */
export const AMOUNT_PATTERN = /^(\d{1,15})(?:\.(\d{1,4}))?$/;
/** What the columns hold (numeric(20,4)): 16 integer digits, so a chat's credits may pass the API's cap. */
const STORED = /^(\d{1,16})(?:\.(\d{1,4}))?$/;

/** The largest amount the API takes (a balance, a top-up): 15 integer digits, 4 decimals. */
export const MAX_AMOUNT_UNITS = 10n ** 19n - 1n;

/**
 * The largest rate per minute an advisor may have: 1,000,000 credits. At it a chat
 * would run about 19,000 years before its credits left the columns' 16 digits.
 */
export const MAX_RATE_UNITS = 1_000_000n * 10_000n;

/** True for a non-negative decimal string with at most 15 integer and 4 fraction digits. */
export function isAmount(s: string): boolean {
  return AMOUNT_PATTERN.test(s);
}

/**
 * Parses a non-negative decimal string (`"12.5"`, `"0.0001"`) into units; takes the
 * 16 integer digits a column may hold (input is checked with `isAmount` first).
 * @example parseAmount('12.5') === 125000n
 */
export function parseAmount(s: string): bigint {
  const m = STORED.exec(s);
  if (!m) throw new RangeError(`not an amount with at most 4 decimals: ${JSON.stringify(s)}`);
  return BigInt(m[1]!) * UNITS_PER_CREDIT + BigInt((m[2] ?? '').padEnd(4, '0'));
}

/**
 * Formats units as a decimal string with exactly 4 fraction digits.
 * @example formatAmount(125000n) === '12.5000'
 */
export function formatAmount(units: bigint): string {
  const sign = units < 0n ? '-' : '';
  // Stryker disable next-line EqualityOperator: equivalent, -0n is 0n
  const abs = units < 0n ? -units : units;
  return `${sign}${abs / UNITS_PER_CREDIT}.${(abs % UNITS_PER_CREDIT).toString().padStart(4, '0')}`;
}

/**
 * Credits for a chat's cumulative paid seconds at a rate per minute (rule 3):
 * `paidSeconds × rate / 60`, rounded half-up to 4 decimals.
 */
export function creditsFor(paidSeconds: number, ratePerMinute: bigint): bigint {
  return (2n * BigInt(paidSeconds) * ratePerMinute + 60n) / 120n;
}

/**
 * The most further paid seconds a chat that has `paidSeconds` already can buy with
 * `budget`: the largest k with creditsFor(paid + k) - creditsFor(paid) <= budget.
 * Null when the rate is 0: time is free without limit.
 */
export function affordablePaidSeconds(paidSeconds: number, ratePerMinute: bigint, budget: bigint): number | null {
  if (ratePerMinute === 0n) return null;
  // a shortcut: without it the arithmetic below gives 0 for any negative budget too
  // Stryker disable next-line ConditionalExpression: equivalent (checked on 200,000 random cases); `if (true)` is killed
  if (budget < 0n) return 0;
  // creditsFor(n) <= T  <=>  2·n·r + 60 < 120·(T + 1)  <=>  n <= (120·T + 59) / (2·r)
  const target = budget + creditsFor(paidSeconds, ratePerMinute);
  const maxTotal = (120n * target + 59n) / (2n * ratePerMinute);
  return Math.max(0, Number(maxTotal) - paidSeconds);
}
