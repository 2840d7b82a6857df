import { expect } from 'chai';
import { SignJWT, decodeJwt } from 'jose';
import { Tokens } from '../server/tokens.js';
import { eventually } from './support/server.js';

const SECRET = 'a-test-secret-of-at-least-32-bytes!';

describe('tokens (pure)', () => {
  const tokens = new Tokens(SECRET);

  it('signs HS256 tokens that jose verifies, with the claims asked for', async () => {
    const now = Date.now();
    const { token, expiresAt } = await tokens.sign({ sub: 'u1', role: 'user' }, 60, now);
    const claims = decodeJwt(token);
    expect(claims).to.include({ sub: 'u1', role: 'user', iat: Math.floor(now / 1000), exp: Math.floor(now / 1000) + 60 });
    expect(expiresAt).to.equal(new Date((Math.floor(now / 1000) + 60) * 1000).toISOString());
    expect(await tokens.verify(token)).to.deep.equal({ sub: 'u1', role: 'user', expiresAt: claims.exp! * 1000 });
  });

  it('verifies a token signed elsewhere with the same secret, and refuses one signed with another', async () => {
    const exp = Math.floor(Date.now() / 1000) + 60;
    const sign = (secret: string) => new SignJWT({ role: 'advisor' }).setProtectedHeader({ alg: 'HS256' }).setSubject('a1').setExpirationTime(exp).sign(new TextEncoder().encode(secret));
    expect(await tokens.verify(await sign(SECRET))).to.deep.equal({ sub: 'a1', role: 'advisor', expiresAt: exp * 1000 });
    expect(await tokens.verify(await sign('another-secret-of-at-least-32-bytes'))).to.equal(null);
  });

  it('refuses a token once it expires, though it was verified (and remembered) before', async () => {
    // exp has a resolution of a second: a ttl of 2 s leaves at least one before it, and lapses within two
    const { token } = await tokens.sign({ sub: 'u2', role: 'user' }, 2, Date.now());
    expect(await tokens.verify(token), 'before exp').to.not.equal(null);
    expect(await tokens.verify(token), 'again, from the cache').to.not.equal(null);
    await eventually(async () => (await tokens.verify(token)) === null, 4000, 50);
  });

  it('refuses a token altered after it was verified and remembered', async () => {
    const { token } = await tokens.sign({ sub: 'u3', role: 'user' }, 60, Date.now());
    expect(await tokens.verify(token)).to.not.equal(null);
    const [header, , signature] = token.split('.');
    const claims = Buffer.from(JSON.stringify({ ...decodeJwt(token), role: 'advisor' })).toString('base64url');
    expect(await tokens.verify(`${header}.${claims}.${signature}`)).to.equal(null);
  });
});
