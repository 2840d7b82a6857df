import { expect } from 'chai';
import fc from 'fast-check';
import pg from 'pg';
import { createDataSource } from '../server/db.js';
import { parseTimestamptz, pgTypes } from '../server/timestamps.js';

/** pg's own reader (postgres-date): the reference. */
const reference = pg.types.getTypeParser(1184, 'text') as (s: string) => Date | number | null;

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** `at` (epoch ms) plus `micros` as Postgres writes it in a session `offset` seconds east of UTC (DateStyle ISO). */
function asPostgresWrites(at: number, micros: number, offset: number): string {
  const local = new Date(at + offset * 1000);
  const fraction = String(local.getUTCMilliseconds() * 1000 + micros).padStart(6, '0').replace(/0+$/, '');
  const abs = Math.abs(offset);
  const [h, m, s] = [Math.floor(abs / 3600), Math.floor((abs % 3600) / 60), abs % 60];
  const zone = `${offset < 0 ? '-' : '+'}${pad(h)}${m || s ? `:${pad(m)}` : ''}${s ? `:${pad(s)}` : ''}`;
  return (
    `${pad(local.getUTCFullYear(), 4)}-${pad(local.getUTCMonth() + 1)}-${pad(local.getUTCDate())} ` +
    `${pad(local.getUTCHours())}:${pad(local.getUTCMinutes())}:${pad(local.getUTCSeconds())}${fraction ? `.${fraction}` : ''}${zone}`
  );
}

describe('timestamptz reading (server/timestamps.ts)', () => {
  it('reads every instant Postgres writes as pg\'s own parser does, to the millisecond, in any zone', () => {
    // real zones (India, Nepal, Newfoundland, Chatham, Line Islands, Baker) and a local-mean-time offset with seconds
    const offsets = [0, 3600, -3600, 19800, 20700, -12600, 45900, 50400, -43200, -75, 2 * 3600 + 5 * 60 + 7];
    fc.assert(
      fc.property(
        fc.integer({ min: Date.UTC(1000, 0, 2), max: Date.UTC(9999, 11, 30) }),
        fc.integer({ min: 0, max: 999 }),
        fc.constantFrom(...offsets),
        (at, micros, offset) => {
          const text = asPostgresWrites(at, micros, offset);
          const fast = parseTimestamptz(text);
          expect(fast, text).to.be.instanceOf(Date);
          expect((fast as Date).getTime(), text).to.equal((reference(text) as Date).getTime());
          expect((fast as Date).getTime(), text).to.equal(at);
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('leaves the rare shapes to pg\'s parser: infinity, BC, years before 1000 or after 9999, a bare date', () => {
    for (const text of ['infinity', '-infinity', '0099-03-01 10:00:00+00', '0999-12-31 23:59:59.5+00', '10000-01-01 00:00:00+00', '2020-05-01 12:00:00+00 BC', '2020-05-01']) {
      const fast = parseTimestamptz(text);
      const ref = reference(text);
      expect(fast instanceof Date ? fast.getTime() : fast, text).to.deep.equal(ref instanceof Date ? ref.getTime() : ref);
    }
  });

  it('is what the Postgres data source reads timestamptz with, and only that type', () => {
    expect(pgTypes.getTypeParser(1184, 'text')).to.equal(parseTimestamptz);
    expect(pgTypes.getTypeParser(1114, 'text')).to.equal(pg.types.getTypeParser(1114, 'text'));
    expect(pgTypes.getTypeParser(20, 'text')).to.equal(pg.types.getTypeParser(20, 'text'));
  });
});

describe('timestamptz from a real Postgres', function () {
  it('reads what Postgres writes, in sessions of several zones, as the instants they are', async function () {
    if (!process.env.DATABASE_URL) return this.skip();
    // literals only: nothing is written, so the URL's own database will do
    const ds = await createDataSource({ databaseUrl: process.env.DATABASE_URL, dataDir: '' });
    await ds.initialize();
    const runner = ds.createQueryRunner();
    try {
      for (const zone of ['UTC', 'Asia/Kathmandu', 'America/St_Johns', 'Pacific/Kiritimati']) {
        await runner.query(`SET TIME ZONE '${zone}'`);
        const [row] = await runner.query(
          `SELECT '2026-12-02 19:50:01.123987+00'::timestamptz AS a, '1970-01-01 00:00:00+00'::timestamptz AS b,
                  'infinity'::timestamptz AS c, '1883-11-18 12:03:58.5+00'::timestamptz AS d, '2026-12-02 19:50:01.123987+00'::timestamptz::text AS t`,
        );
        if (zone !== 'UTC') expect(row.t, 'the session writes in its own zone').to.not.match(/\+00$/);
        // the data source reads with parseTimestamptz (pg's parser would give the same instants)
        expect((ds.driver as unknown as { master: { options: { types: unknown } } }).master.options.types).to.equal(pgTypes);
        expect((parseTimestamptz(row.t) as Date).getTime(), zone).to.equal(Date.UTC(2026, 11, 2, 19, 50, 1, 123));
        expect(row.a.getTime(), zone).to.equal(Date.UTC(2026, 11, 2, 19, 50, 1, 123));
        expect(row.b.getTime(), zone).to.equal(0);
        expect(row.c, zone).to.equal(Infinity);
        expect(row.d.getTime(), zone).to.equal(Date.UTC(1883, 10, 18, 12, 3, 58, 500));
      }
    } finally {
      await runner.release();
      await ds.destroy();
    }
  });
});
