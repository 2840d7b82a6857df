import { createHmac } from 'node:crypto';
import { expect } from 'chai';
import { retryDelayMs } from '../server/webhooks/dispatcher.js';
import { sign, verify } from '../server/webhooks/signature.js';

describe('webhook signatures and retries', () => {
  const secret = 'a-secret-of-sixteen+';
  const body = '{"id":"e1","type":"chat.ended","createdAt":"2026-12-02T12:00:00.000Z","data":{}}';
  const now = Date.parse('2026-12-02T12:00:00.000Z');

  it('signs t and the raw body with HMAC-SHA256, as SPEC 8 writes it', () => {
    const header = sign(secret, body, now);
    const t = Math.floor(now / 1000);
    expect(header).to.equal(`t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`);
  });

  it('verifies a good signature, and refuses another body, another secret, a stale t or a malformed header', () => {
    const header = sign(secret, body, now);
    expect(verify(secret, body, header, now + 1000)).to.equal(true);
    expect(verify(secret, `${body} `, header, now)).to.equal(false);
    expect(verify('another-secret-of-16', body, header, now)).to.equal(false);
    expect(verify(secret, body, header, now + 301_000), 'replayed after the 5 minute tolerance').to.equal(false);
    for (const bad of [undefined, '', 't=x,v1=00', `t=${now / 1000}`, 'v1=abc', `t=${Math.floor(now / 1000)},v1=zz`]) {
      expect(verify(secret, body, bad, now), String(bad)).to.equal(false);
    }
  });

  it('retries after 5 s, 10 s, 20 s ... within ±20%, never more than an hour apart', () => {
    const at = (n: number, r: number) => retryDelayMs(n, 5000, () => r);
    expect([1, 2, 3, 4].map((n) => at(n, 0.5))).to.deep.equal([5000, 10_000, 20_000, 40_000]);
    expect(at(1, 0)).to.equal(4000);
    expect(at(1, 0.999999)).to.be.closeTo(6000, 1);
    expect(at(20, 0.5)).to.equal(3_600_000);
    expect(at(20, 0.999999), 'jitter never takes it past the hour').to.equal(3_600_000);
    expect(at(10, 0), 'but spreads it below').to.equal(2_048_000);
  });
});
