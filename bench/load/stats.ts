/** Percentiles of a sample, the one summary every figure of the load run uses. */

/** A distribution's summary (ms unless said otherwise). */
export interface Dist {
  n: number;
  min: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentiles of `xs`, rounded to 0.1; all zeros for an empty sample. */
export function dist(xs: ArrayLike<number>): Dist {
  if (xs.length === 0) return { n: 0, min: 0, p50: 0, p95: 0, p99: 0, max: 0 };
  const s = Float64Array.from(xs).sort();
  const at = (p: number) => round(s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!);
  return { n: s.length, min: round(s[0]!), p50: at(50), p95: at(95), p99: at(99), max: round(s[s.length - 1]!) };
}

/** `x` rounded to `digits` decimals. */
export const round = (x: number, digits = 1): number => +x.toFixed(digits);

/** Resolves after `ms`. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, ms)));

/** Adds one failure to `errors`, keyed by its message (ids and numbers folded so the keys stay few). */
export function countError(errors: Record<string, number>, err: unknown): void {
  const key = String((err as Error)?.message ?? err)
    .replace(/\d+/g, 'N')
    .slice(0, 80);
  errors[key] = (errors[key] ?? 0) + 1;
}

/** Sums counts keyed by message. */
export function mergeCounts(into: Record<string, number>, from: Record<string, number>): Record<string, number> {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
  return into;
}
