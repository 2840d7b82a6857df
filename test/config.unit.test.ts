import { expect } from 'chai';
import { ConfigError, loadConfig } from '../server/config.js';

describe('configuration (SPEC 4)', () => {
  const db = { DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/x' };

  it('refuses to start a node on DATABASE_URL without the cluster\'s shared key and secret, naming both', () => {
    const err = (() => {
      try {
        loadConfig(db, { node: true });
        return null;
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err).to.be.instanceOf(ConfigError);
    expect(err!.message).to.include('CHATMETER_API_KEY').and.to.include('CHATMETER_JWT_SECRET');
    expect(() => loadConfig({ ...db, CHATMETER_API_KEY: 'k'.repeat(16) }, { node: true })).to.throw(ConfigError, /CHATMETER_JWT_SECRET/);
  });

  it('lets CLIs on DATABASE_URL (migrate, verify) run without them, and generates them only on the embedded database', () => {
    expect(loadConfig(db).databaseUrl).to.equal(db.DATABASE_URL);
    const embedded = loadConfig({}, { node: true });
    expect(embedded.generatedSecrets).to.deep.equal({ apiKey: true, jwtSecret: true });
    expect(embedded.apiKey).to.have.length.greaterThan(16);
  });

  it('reads the lease time and the test hooks, with safe defaults', () => {
    const c = loadConfig({});
    expect(c.clusterLeaseMs).to.equal(1500);
    expect(c.test).to.deep.equal({ clockSkewMs: 0, settleUnowned: false });
    expect(loadConfig({ CLUSTER_LEASE_MS: '900', CHATMETER_TEST_CLOCK_SKEW_MS: '-5000', CHATMETER_TEST_SETTLE_UNOWNED: '1' })).to.deep.include({
      clusterLeaseMs: 900,
      test: { clockSkewMs: -5000, settleUnowned: true },
    });
    expect(() => loadConfig({ CLUSTER_LEASE_MS: '10' })).to.throw(ConfigError, /CLUSTER_LEASE_MS/);
  });
});
