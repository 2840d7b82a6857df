import { expect } from 'chai';
import type { PresenceStore } from '../../server/metering/presence.js';

/**
 * The contract every PresenceStore keeps (rule 5), run against each implementation:
 * the local one now, a shared one when nodes share presence.
 */
export function presenceContract(name: string, make: () => Promise<PresenceStore>) {
  describe(`presence contract: ${name}`, () => {
    let p: PresenceStore;
    beforeEach(async () => {
      p = await make();
    });

    it('knows nothing of a chat nobody joined', async () => {
      expect(await p.span('c', 0)).to.equal(null);
      expect(await p.heartbeat('c', 's1', 0)).to.equal(null);
    });

    it('runs until the latest heartbeat plus interval plus grace', async () => {
      expect(await p.join('c', 's1', 1000)).to.equal(true);
      expect(await p.heartbeat('c', 's1', 9000)).to.equal(false);
      expect(await p.span('c', 9000)).to.deep.equal({ since: 1000, until: 24_000, lastHeartbeatAt: 9000 });
    });

    it('stops at the moment the last socket leaves, not before', async () => {
      await p.join('c', 's1', 0);
      await p.join('c', 's2', 1000);
      expect(await p.leave('c', 's1', 2000)).to.equal(false);
      expect((await p.span('c', 2000))!.until).to.equal(16_000);
      expect(await p.leave('c', 's2', 3000)).to.equal(true);
      expect((await p.span('c', 3000))!.until).to.equal(3000);
    });

    it('starts a new span when presence returns after a gap', async () => {
      await p.join('c', 's1', 0);
      await p.leave('c', 's1', 5000);
      expect(await p.join('c', 's1', 60_000)).to.equal(true);
      expect(await p.span('c', 60_000)).to.deep.include({ since: 60_000, until: 75_000 });
    });

    it('starts a new span when a silent socket heartbeats again after its window', async () => {
      await p.join('c', 's1', 0);
      expect(await p.heartbeat('c', 's1', 20_000)).to.equal(true);
      expect(await p.span('c', 20_000)).to.deep.include({ since: 20_000, until: 35_000 });
    });

    it('does not let a silent tab keep the meter running after another tab leaves', async () => {
      await p.join('c', 'silent', 0);
      await p.join('c', 'active', 1000);
      await p.heartbeat('c', 'active', 20_000);
      expect(await p.leave('c', 'active', 25_000)).to.equal(true);
      expect((await p.span('c', 25_000))!.until).to.equal(25_000);
    });

    it('reports exactly one last leave when many sockets come and go at once', async () => {
      const ids = Array.from({ length: 40 }, (_, i) => `s${i}`);
      const started = await Promise.all(ids.map((id) => p.join('c', id, 1000)));
      expect(started.filter(Boolean)).to.have.length(1);
      const last = await Promise.all(ids.map((id) => p.leave('c', id, 2000)));
      expect(last.filter(Boolean)).to.have.length(1);
      expect((await p.span('c', 2000))!.until).to.equal(2000);
    });

    it('releases a chat nobody is joined to, and keeps one a socket is joined to or joined after the release was decided', async () => {
      await p.join('c', 's1', 0);
      await p.join('d', 's2', 0);
      await p.release('c', 500);
      expect(await p.span('c', 1000), 'a joined socket keeps it').to.not.equal(null);
      expect(await p.leave('c', 's1', 1000)).to.equal(true);
      // decided at 2 s, but someone joined at 3 s and left (the chat may have started meanwhile)
      await p.join('c', 's3', 3000);
      await p.leave('c', 's3', 4000);
      await p.release('c', 2000);
      expect(await p.span('c', 5000), 'presence newer than the release is kept').to.not.equal(null);
      await p.release('c', 4000);
      expect(await p.span('c', 5000)).to.equal(null);
      expect(await p.span('d', 5000)).to.not.equal(null);
    });

    it('keeps chats apart', async () => {
      await p.join('a', 's1', 0);
      await p.join('b', 's1', 0);
      await p.leave('a', 's1', 1000);
      expect((await p.span('b', 1000))!.until).to.equal(15_000);
      const spans = await p.spans(['a', 'b', 'z'], 1000);
      expect(spans.get('a')!.until).to.equal(1000);
      expect(spans.get('z')).to.equal(null);
    });
  });
}
