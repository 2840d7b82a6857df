/**
 * Billed against present, per chat. "Present" comes from the tabs: a tab is present
 * from its join to its disconnect (the join's send and ack bracket the server's
 * stamp), except inside the windows a fault put on it. Two figures per chat:
 *
 * - certain: the time some tab was surely joined and heartbeating to a live node;
 * - most: the longest the rules allow the meter to run (the uncertain windows in).
 *
 * Both are clipped to the chat's active span (`started_at` to `ended_at`, from the
 * database, whose clock is this machine's). Billing is per whole second, and each
 * span of presence may lose the fraction of a second at its end (the next span bills
 * from its own start), so:
 *
 * - double-billed = billed - floor(most + 1 tick per span of `most`), when positive
 *   (the tick: a server may see a disconnect a little after the tab did);
 * - lost = ceil(certain - 1 s per span of `certain` and per handover the fault
 *   caused) - billed, when positive (each may leave a fraction of a second unbilled).
 */
import { type Span, clip, normalize, subtract, total } from './intervals.js';
import type { Tab } from './tab.js';

/** A chat as the database has it after the scenario ended it. */
export interface ChatRow {
  id: string;
  startedAt: number;
  endedAt: number | null;
  endReason: string | null;
  billed: number;
}

export interface ChatMeasure {
  chatId: string;
  billed: number;
  certainMs: number;
  mostMs: number;
  double: number;
  lost: number;
  spans: number;
}

/** The spans a tab was surely present, and the spans it may have been. */
export function tabPresence(tab: Tab, now: number): { certain: Span[]; most: Span[] } {
  const joined = tab.sessions.filter((s) => s.ok === true).map((s): Span => [s.ack!, s.end ?? now]);
  // a join never answered may have joined: only possibly present
  const maybe = tab.sessions.filter((s) => s.ok !== false).map((s): Span => [s.sent, s.end ?? now]);
  const uncertain = tab.overrides.filter((o) => o.kind === 'uncertain').map((o): Span => [o.from, o.to]);
  const absent = tab.overrides.filter((o) => o.kind === 'absent').map((o): Span => [o.from, o.to]);
  return {
    certain: subtract(joined, [...uncertain, ...absent]),
    most: subtract(normalize([...maybe, ...uncertain]), absent),
  };
}

/** One chat's figures; `handovers` is how many times the fault moved its presence or settlement. */
export function measureChat(row: ChatRow, tabs: Tab[], handovers: number, tickMs: number, now = Date.now()): ChatMeasure {
  const window: Span = [row.startedAt, row.endedAt ?? now];
  const per = tabs.map((t) => tabPresence(t, now));
  const certain = clip(per.flatMap((p) => p.certain), window);
  const most = clip(per.flatMap((p) => p.most), window);
  const tick = tickMs / 1000;
  const allowedMost = Math.floor(total(most) / 1000 + tick * Math.max(1, most.length) + 1e-6);
  const allowedLeast = Math.max(0, Math.ceil(total(certain) / 1000 - (Math.max(1, certain.length) + handovers) - 1e-6));
  return {
    chatId: row.id,
    billed: row.billed,
    certainMs: total(certain),
    mostMs: total(most),
    double: Math.max(0, row.billed - allowedMost),
    lost: Math.max(0, allowedLeast - row.billed),
    spans: certain.length,
  };
}

/** A chat's meters around a fault: the last one before it and the first running one settled after it ended. */
export function acrossFault(tabs: Tab[], faultAt: number, end: number | null): string {
  const all = tabs.flatMap((t) => t.meters).sort((a, b) => a.at - b.at);
  const before = all.filter((m) => m.at < faultAt).at(-1);
  const after = all.find((m) => m.state === 'running' && m.serverTime >= (end ?? faultAt));
  if (!before || !after) return 'no meters around the fault';
  return `its meter read ${before.duration} s just before the fault and ${after.duration} s ${((after.serverTime - before.serverTime) / 1000).toFixed(1)} s later, once metered again`;
}
