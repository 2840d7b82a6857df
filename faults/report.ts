/** The fault run's table (Markdown, so docs/RELIABILITY.md can hold it as printed) and its last line. */
import type { Row } from './runner.js';

const HEADER = ['fault', 'chats (affected)', 'tabs', 'billed s', 'present s', 'unsure s', 'double-billed s', 'lost s', 'crashes', 'recovery', 'verify'];

function recovery(ms: number | null | undefined): string {
  if (ms === undefined) return 'n/a';
  if (ms === null) return 'none in 30 s';
  return `${(ms / 1000).toFixed(1)} s`;
}

export function table(rows: Row[]): string {
  const cells = rows.map((r) => [
    r.fault,
    `${r.chats} (${r.affected})`,
    String(r.tabs),
    String(r.billed),
    (r.presentMs / 1000).toFixed(1),
    (r.unsureMs / 1000).toFixed(1),
    String(r.double),
    String(r.lost),
    String(r.crashes),
    recovery(r.recoveryMs),
    r.verify ? 'ok' : 'FAILED',
  ]);
  const widths = HEADER.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(HEADER), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...cells.map(line)].join('\n');
}

export function notes(rows: Row[]): string {
  return rows
    .map((r) => [`${r.key} (${r.seconds.toFixed(0)} s):`, ...(r.notes.length ? r.notes : ['nothing to note']).map((n) => `  - ${n}`)].join('\n'))
    .join('\n');
}

/** The line scripts judge the run by. */
export function lastLine(rows: Row[], verifyOk: boolean, extraCrashes = 0): string {
  const d = rows.reduce((s, r) => s + r.double, 0);
  const l = rows.reduce((s, r) => s + r.lost, 0);
  const c = rows.reduce((s, r) => s + r.crashes, 0) + extraCrashes;
  return `faults: ${rows.length} run, ${d} seconds double-billed, ${l} seconds lost, ${c} crashes, verify ${verifyOk ? 'ok' : 'failed'}`;
}
