import { expect } from 'chai';
import fc from 'fast-check';
import { MAX_AMOUNT_UNITS, MAX_RATE_UNITS, affordablePaidSeconds, creditsFor, formatAmount, isAmount, parseAmount, UNITS_PER_CREDIT } from '../server/money.js';

/** Half-up rounding of paid × rate / 60 units, written as quotient and remainder (unlike money.ts). */
function referenceCredits(paidSeconds: number, rate: bigint): bigint {
  const exact = BigInt(paidSeconds) * rate;
  const whole = exact / 60n;
  return exact % 60n >= 30n ? whole + 1n : whole;
}

/** Units up to the 15 integer digits an amount may have. */
const units = fc.bigInt({ min: 0n, max: 10n ** 19n - 1n });
const rateUnits = fc.bigInt({ min: 1n, max: 10_000_000n });

describe('money (pure)', () => {
  describe('parseAmount / formatAmount', () => {
    it('parses decimal strings into 1/10000 units', () => {
      const cases: Array<[string, bigint]> = [
        ['0', 0n],
        ['12.5', 125_000n],
        ['12.5000', 125_000n],
        ['0.0001', 1n],
        ['007.10', 71_000n],
        ['999999999999999.9999', 10n ** 19n - 1n],
      ];
      for (const [s, u] of cases) expect(parseAmount(s), s).to.equal(u);
    });

    it('formats units with exactly four fraction digits', () => {
      expect(formatAmount(0n)).to.equal('0.0000');
      expect(formatAmount(125_000n)).to.equal('12.5000');
      expect(formatAmount(1n)).to.equal('0.0001');
      expect(formatAmount(UNITS_PER_CREDIT * 42n + 42n)).to.equal('42.0042');
      expect(formatAmount(-1n)).to.equal('-0.0001');
    });

    it('round-trips every amount: parse(format(u)) = u', () => {
      fc.assert(fc.property(units, (u) => parseAmount(formatAmount(u)) === u));
    });

    it('round-trips every valid string to its normal form', () => {
      const amount = fc
        .tuple(fc.stringMatching(/^\d{1,15}$/), fc.option(fc.stringMatching(/^\d{1,4}$/), { nil: undefined }))
        .map(([i, f]) => (f === undefined ? i : `${i}.${f}`));
      fc.assert(
        fc.property(amount, (s) => {
          expect(isAmount(s)).to.equal(true);
          const normal = formatAmount(parseAmount(s));
          expect(normal).to.match(/^\d+\.\d{4}$/);
          expect(parseAmount(normal)).to.equal(parseAmount(s));
          // same value as the decimal read exactly (no float): integer part and padded fraction
          const [i, f = ''] = s.split('.');
          expect(parseAmount(s)).to.equal(BigInt(i! + f.padEnd(4, '0')));
        }),
      );
    });

    it('rejects negatives, more than 4 decimals, floats and garbage', () => {
      const bad = [
        '-1', '-0.0001', '1.23456', '0.00001', '1e3', '1E3', '1e-4', '1.', '.5', '', ' ', ' 1', '1 ',
        '1,5', 'abc', 'NaN', 'Infinity', '0x10', '+1', '1_000', '1.2.3', '١٢', '12345678901234567',
      ];
      for (const s of bad) {
        expect(isAmount(s), JSON.stringify(s)).to.equal(false);
        expect(() => parseAmount(s), JSON.stringify(s)).to.throw(RangeError);
      }
    });

    it('names the string it refuses, for the log line of whatever passed it a bad amount', () => {
      expect(() => parseAmount('1.23456')).to.throw(RangeError, 'not an amount with at most 4 decimals: "1.23456"');
    });

    it('caps amounts at the largest the API takes, 15 integer digits and 4 decimals', () => {
      expect(isAmount(formatAmount(MAX_AMOUNT_UNITS))).to.equal(true);
      expect(isAmount(formatAmount(MAX_AMOUNT_UNITS + 1n))).to.equal(false);
    });

    it('caps rates at 1,000,000 credits a minute, where a chat bills 19,000 years before leaving numeric(20,4)', () => {
      expect(formatAmount(MAX_RATE_UNITS)).to.equal('1000000.0000');
      const seconds = 19_000 * 365.25 * 86_400;
      const credits = formatAmount(creditsFor(seconds, MAX_RATE_UNITS));
      expect(() => parseAmount(credits), credits).to.not.throw();
      expect(() => parseAmount(formatAmount(creditsFor(Math.round(seconds * 1.1), MAX_RATE_UNITS)))).to.throw(RangeError);
    });

    it('takes 15 integer digits as input, and reads the 16 a numeric(20,4) column holds', () => {
      expect(isAmount('1234567890123456')).to.equal(false);
      expect(parseAmount('9999999999999999.9999')).to.equal(10n ** 20n - 1n);
    });

    it('rejects any string that is not plain digits with an optional 1-4 digit fraction', () => {
      fc.assert(
        fc.property(fc.string({ maxLength: 24 }), (s) => {
          const valid = /^\d{1,15}(\.\d{1,4})?$/.test(s);
          expect(isAmount(s)).to.equal(valid);
          if (!/^\d{1,16}(\.\d{1,4})?$/.test(s)) expect(() => parseAmount(s)).to.throw(RangeError);
        }),
      );
    });
  });

  describe('creditsFor (rule 3)', () => {
    it('rounds paid × rate / 60 half-up to 4 decimals on known values', () => {
      const cases: Array<[number, string, string]> = [
        // [paid seconds, rate per minute, credits]
        [0, '6', '0.0000'],
        [1, '1', '0.0167'], // 0.016666…
        [2, '1', '0.0333'], // 0.033333…
        [3, '1', '0.0500'],
        [1, '6', '0.1000'],
        [29, '0.0001', '0.0000'], // 0.0000483…
        [30, '0.0001', '0.0001'], // exactly 0.00005: half goes up
        [90, '0.0001', '0.0002'], // 0.00015
        [150, '0.0001', '0.0003'], // 0.00025: half-up, not half-even (which gives 0.0002)
        [10, '0.0003', '0.0001'], // 0.00005
        [20, '2.5', '0.8333'],
        [1, '2.5', '0.0417'], // 0.041666…
        [7, '13.3333', '1.5556'], // 93.3331 / 60 = 1.5555516…
        [60, '0', '0.0000'],
        [3600, '6', '360.0000'],
      ];
      for (const [paid, rate, credits] of cases) {
        expect(formatAmount(creditsFor(paid, parseAmount(rate))), `${paid} s at ${rate}/min`).to.equal(credits);
      }
    });

    it('equals the quotient-and-remainder rounding for any paid seconds and rate', () => {
      fc.assert(
        fc.property(fc.nat({ max: 10_000_000 }), fc.bigInt({ min: 0n, max: 10n ** 12n }), (paid, rate) => {
          expect(creditsFor(paid, rate)).to.equal(referenceCredits(paid, rate));
        }),
      );
    });

    it('never decreases as paid seconds grow', () => {
      fc.assert(
        fc.property(fc.nat({ max: 1_000_000 }), rateUnits, (paid, rate) => creditsFor(paid + 1, rate) >= creditsFor(paid, rate)),
      );
    });
  });

  describe('affordablePaidSeconds', () => {
    it('is the largest k with creditsFor(p+k) - creditsFor(p) <= budget', () => {
      fc.assert(
        fc.property(fc.nat({ max: 100_000 }), rateUnits, fc.bigInt({ min: 0n, max: 10_000_000n }), (paid, rate, budget) => {
          const k = affordablePaidSeconds(paid, rate, budget);
          expect(k).to.be.a('number');
          const base = creditsFor(paid, rate);
          expect(k!).to.be.at.least(0);
          expect(creditsFor(paid + k!, rate) - base <= budget).to.equal(true);
          expect(creditsFor(paid + k! + 1, rate) - base > budget).to.equal(true);
        }),
      );
    });

    it('matches a brute-force search on small values', () => {
      fc.assert(
        fc.property(fc.nat({ max: 300 }), fc.bigInt({ min: 1n, max: 200_000n }), fc.bigInt({ min: 0n, max: 5_000n }), (paid, rate, budget) => {
          let k = 0;
          while (referenceCredits(paid + k + 1, rate) - referenceCredits(paid, rate) <= budget) k++;
          expect(affordablePaidSeconds(paid, rate, budget)).to.equal(k);
        }),
      );
    });

    it('is null at rate 0 (unlimited), whatever the budget', () => {
      fc.assert(fc.property(fc.nat(), fc.bigInt({ min: -10n, max: 10n ** 9n }), (paid, budget) => affordablePaidSeconds(paid, 0n, budget) === null));
    });

    it('buys nothing with a negative budget and exact seconds on known values', () => {
      expect(affordablePaidSeconds(0, parseAmount('6'), -1n)).to.equal(0);
      // 0.1 per second: 1 credit buys 10 s, 0.9999 only 9
      expect(affordablePaidSeconds(0, parseAmount('6'), parseAmount('1'))).to.equal(10);
      expect(affordablePaidSeconds(0, parseAmount('6'), parseAmount('0.9999'))).to.equal(9);
      // rounding lets 29 seconds at 0.0001/min cost nothing; the 30th costs 0.0001
      expect(affordablePaidSeconds(0, 1n, 0n)).to.equal(29);
      expect(affordablePaidSeconds(29, 1n, 0n)).to.equal(0);
      expect(affordablePaidSeconds(29, 1n, 1n)).to.equal(60);
    });
  });
});
