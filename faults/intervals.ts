/**
 * Time spans as sorted, disjoint [from, to) pairs of epoch ms: the arithmetic the
 * fault run needs to turn tabs' connections and a fault's windows into the seconds
 * a user was present.
 */

export type Span = readonly [number, number];

/** Sorted, merged, without empty spans. */
export function normalize(spans: readonly Span[]): Span[] {
  const sorted = spans.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of sorted) {
    const last = out.at(-1);
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** What of `a` lies outside every span of `b`. */
export function subtract(a: readonly Span[], b: readonly Span[]): Span[] {
  let rest = normalize(a);
  for (const [c, d] of normalize(b)) {
    rest = rest.flatMap(([x, y]): Span[] => {
      if (d <= x || c >= y) return [[x, y]];
      const parts: Span[] = [];
      if (c > x) parts.push([x, c]);
      if (d < y) parts.push([d, y]);
      return parts;
    });
  }
  return rest;
}

/** The parts of `a` inside `window`. */
export function clip(a: readonly Span[], window: Span): Span[] {
  return normalize(a.map(([x, y]): Span => [Math.max(x, window[0]), Math.min(y, window[1])]));
}

/** Total length in ms. */
export function total(a: readonly Span[]): number {
  return normalize(a).reduce((sum, [x, y]) => sum + (y - x), 0);
}
