// Mutation testing of the money core (issue 10, item 5): `npm run mutate`, docs/RELIABILITY.md.
// Not part of `npm test`. Mutate one file with `npm run mutate -- --mutate server/money.ts`.

import pg from 'pg';

// The database tests make their own throwaway databases on this server; the base database is never used.
process.env.DATABASE_URL ??= 'postgres://postgres@127.0.0.1:5432/postgres';
// A mutant that hangs is timed out by killing its test runner, whose databases stay behind: they are
// named apart and dropped when the next run starts (only those nobody is connected to).
process.env.TEST_DATABASE_PREFIX = 'chatmeter_mut';
await dropLeftovers(process.env.DATABASE_URL);

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  mutate: ['server/money.ts', 'server/metering/rules.ts', 'server/metering/settlement.ts'],
  // the tests that pin these three files; each mutant runs only the tests that reached it (perTest)
  testRunner: 'mocha',
  plugins: ['./stryker/mocha-runner.mjs'],
  mochaOptions: {
    config: '.mocharc.json',
    require: ['./stryker/register-tsx.mjs'],
    spec: [
      'test/money.unit.test.ts',
      'test/rules.unit.test.ts',
      'test/decide.unit.test.ts',
      'test/settlement.int.test.ts',
      'test/initialize.int.test.ts',
      'test/billing.property.int.test.ts',
    ],
  },
  coverageAnalysis: 'perTest',
  // two cores, shared with other work
  concurrency: 2,
  // A mutant slower than this is counted as detected (a timeout). Stryker's default (1.5 x the tests'
  // time + 5 s) timed out a dozen mutants that can't hang (an error message, Math.max for Math.min) when
  // another job loaded the machine, padding the score; a real hang costs a minute at most here.
  timeoutFactor: 3,
  timeoutMS: 15_000,
  // Stryker rewrites tsconfig paths through the TypeScript compiler API, which TypeScript 7 no
  // longer ships; this tsconfig has no extends or references to rewrite, so point it at nothing
  tsconfigFile: 'stryker/no-tsconfig.json',
  tempDirName: '.stryker-tmp',
  reporters: ['clear-text', 'progress-append-only', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  clearTextReporter: { reportTests: false, logTests: false },
};

async function dropLeftovers(url) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query(
      `SELECT datname FROM pg_database d
        WHERE datname LIKE 'chatmeter\\_mut\\_%' AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)`,
    );
    for (const { datname } of rows) await client.query(`DROP DATABASE IF EXISTS "${datname}"`);
  } finally {
    await client.end();
  }
}
