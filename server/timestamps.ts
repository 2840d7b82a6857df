/**
 * A faster reader of Postgres `timestamptz` text for node-postgres.
 *
 * Every tick reads several timestamps per chat (the record's settled-until, last
 * presence and heartbeat, the chat's start...): 40,000 a second at 5,000 chats.
 * pg's parser (postgres-date) runs three regular expressions on each; in the
 * settlement bench that was 6% of the node's CPU. Postgres writes timestamptz in one
 * shape (`YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]]`, DateStyle ISO): that shape is
 * read here digit by digit; anything else (BC, years past 9999, infinity) goes to
 * postgres-date. Same result, to the millisecond (both truncate the microseconds):
 * a property test checks it against postgres-date.
 */
import pg from 'pg';

const TIMESTAMPTZ_OID = 1184;

const fallback = pg.types.getTypeParser(TIMESTAMPTZ_OID, 'text') as (text: string) => Date | number | null;

/** Two decimal digits at `i`, or NaN. */
function two(s: string, i: number): number {
  const a = s.charCodeAt(i) - 48;
  const b = s.charCodeAt(i + 1) - 48;
  return a >= 0 && a <= 9 && b >= 0 && b <= 9 ? a * 10 + b : NaN;
}

/** A Postgres timestamptz as a Date (or what postgres-date makes of the rare shapes: ±Infinity for infinity). */
export function parseTimestamptz(s: string): Date | number | null {
  // 'YYYY-MM-DD HH:MM:SS' then an optional fraction, then the zone: at least 22 characters
  if (s.length < 22 || s.charCodeAt(4) !== 45 || s.charCodeAt(7) !== 45 || s.charCodeAt(10) !== 32 || s.charCodeAt(13) !== 58 || s.charCodeAt(16) !== 58) {
    return fallback(s);
  }
  const year = two(s, 0) * 100 + two(s, 2);
  const month = two(s, 5);
  const day = two(s, 8);
  const hour = two(s, 11);
  const minute = two(s, 14);
  const second = two(s, 17);
  let i = 19;
  let ms = 0;
  if (s.charCodeAt(i) === 46) {
    // milliseconds: the first three digits; further digits are truncated, as postgres-date does
    i++;
    for (let scale = 100, c = s.charCodeAt(i) - 48; c >= 0 && c <= 9; c = s.charCodeAt(++i) - 48) {
      ms += c * scale;
      scale = scale === 1 ? 0 : scale / 10;
    }
  }
  const sign = s.charCodeAt(i);
  if (sign !== 43 && sign !== 45) return fallback(s);
  let offset = two(s, i + 1) * 3600;
  i += 3;
  if (s.charCodeAt(i) === 58) {
    offset += two(s, i + 1) * 60;
    i += 3;
  }
  if (s.charCodeAt(i) === 58) {
    offset += two(s, i + 1);
    i += 3;
  }
  // a year before 1000 would need Date.UTC's two-digit-year correction: leave it to postgres-date
  if (i !== s.length || !(year >= 1000) || Number.isNaN(month + day + hour + minute + second + offset)) return fallback(s);
  return new Date(Date.UTC(year, month - 1, day, hour, minute, second, ms) - (sign === 43 ? offset : -offset) * 1000);
}

/** node-postgres `types`: timestamptz read by `parseTimestamptz`, every other type as pg reads it. */
export const pgTypes = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === TIMESTAMPTZ_OID && (format ?? 'text') === 'text') return parseTimestamptz;
    return pg.types.getTypeParser(oid, format);
  },
};
