import { expect } from 'chai';
import { SignJWT } from 'jose';
import { freshDatabase, type TestDb } from './support/db.js';
import { type ClientSocket, type TestNode, SNAPSHOT_KEYS, call, collect, connectWith, eventually, startNode, waitFor } from './support/server.js';


describe('real-time protocol (real server, sockets on loopback)', () => {
  let db: TestDb;
  let node: TestNode;

  before(async () => {
    db = await freshDatabase();
  });
  after(() => db.close());
  beforeEach(async () => {
    await db.reset();
    node = await startNode(db);
  });
  afterEach(() => node.close());

  /** Given a user, an advisor and a pending chat between them, created over HTTP. */
  async function given(opts: { chatId?: string; userId?: string; advisorId?: string; balance?: string; rate?: string; free?: number } = {}) {
    const userId = opts.userId ?? 'u1';
    const advisorId = opts.advisorId ?? 'a1';
    const chatId = opts.chatId ?? 'c1';
    expect((await node.api('PUT', `/v1/users/${userId}`, { name: 'Ursula', balance: opts.balance ?? '10' })).status).to.be.oneOf([200, 201]);
    expect((await node.api('PUT', `/v1/advisors/${advisorId}`, { name: 'Ada', ratePerMinute: opts.rate ?? '6', freeSeconds: opts.free ?? 0 })).status).to.be.oneOf([200, 201]);
    expect((await node.api('POST', '/v1/chats', { id: chatId, userId, advisorId })).status).to.be.oneOf([200, 201]);
    return { userId, advisorId, chatId };
  }

  /** A user tab joined to the chat and an advisor socket that started it. */
  async function running(opts: Parameters<typeof given>[0] = {}) {
    const g = await given(opts);
    const tab = await node.connect(g.userId, 'user');
    const joined = await call(tab, 'chat:join', { chatId: g.chatId });
    expect(joined.ok, JSON.stringify(joined)).to.equal(true);
    const advisor = await node.connect(g.advisorId, 'advisor');
    const started = await call(advisor, 'chat:start', { chatId: g.chatId });
    expect(started.ok, JSON.stringify(started)).to.equal(true);
    return { ...g, tab, advisor, recordId: joined.meter.recordId as string };
  }

  const heartbeats = (s: ClientSocket, chatId: string) => {
    const t = setInterval(() => s.emit('heartbeat', { chatId }), 100);
    return () => clearInterval(t);
  };

  describe('handshake', () => {
    it('refuses missing, expired, forged, alg:none and role-less tokens with unauthorized', async () => {
      const secret = new TextEncoder().encode(node.config.jwtSecret);
      const now = Math.floor(Date.now() / 1000);
      const expired = await new SignJWT({ role: 'user' }).setProtectedHeader({ alg: 'HS256' }).setSubject('u1').setExpirationTime(now - 10).sign(secret);
      const forged = await new SignJWT({ role: 'user' }).setProtectedHeader({ alg: 'HS256' }).setSubject('u1').setExpirationTime(now + 60).sign(new TextEncoder().encode('another-secret-another-secret-0123'));
      const noExp = await new SignJWT({ role: 'user' }).setProtectedHeader({ alg: 'HS256' }).setSubject('u1').sign(secret);
      const noRole = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject('u1').setExpirationTime(now + 60).sign(secret);
      const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
      const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ sub: 'u1', role: 'user', exp: now + 60 })}.`;
      for (const token of [undefined, '', 'garbage', expired, forged, noExp, noRole, none, 42]) {
        const err = await connectWith(node.url, token === undefined ? {} : { token }).then(
          (s) => {
            s.close();
            return null;
          },
          (e: Error) => e,
        );
        expect(err?.message, `token ${String(token).slice(0, 20)}`).to.equal('unauthorized');
      }
      // and a good one connects
      (await node.connect('u1', 'user')).close();
    });

    it('closes the transport when the handshake\'s token expires, stopping the meter at once', async () => {
      const g = await given({ free: 0, balance: '100' });
      const res = await node.api('POST', '/v1/tokens', { sub: g.userId, role: 'user', ttlSeconds: 2 });
      const tab = await connectWith(node.url, { token: res.body.token });
      const advisor = await node.connect(g.advisorId, 'advisor');
      try {
        expect((await call(tab, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
        const beat = setInterval(() => tab.connected && tab.emit('heartbeat', { chatId: g.chatId }), 100);
        try {
          expect((await call(advisor, 'chat:start', { chatId: g.chatId })).ok).to.equal(true);
          const gone = new Promise<string>((resolve) => tab.once('disconnect', (reason) => resolve(reason)));
          const away = waitFor(advisor, 'meter', (m) => m.state === 'away', 4000);
          expect(await gone).to.equal('transport close');
          expect(Date.now()).to.be.at.least(Date.parse(res.body.expiresAt) - 50);
          await away;
        } finally {
          clearInterval(beat);
        }
      } finally {
        tab.close();
      }
    });

    it('refuses a browser handshake from a foreign origin', async () => {
      const token = await node.token('u1', 'user');
      const err = await connectWith(node.url, { token }, { transports: ['polling'], extraHeaders: { origin: 'https://evil.example' } }).then(
        (s) => {
          s.close();
          return null;
        },
        (e: Error) => e,
      );
      expect(err).to.be.instanceOf(Error);
    });
  });

  describe('chat:join', () => {
    it('acks with the chat, a meter snapshot of exactly the SPEC fields, and the heartbeat interval', async () => {
      const g = await given({ free: 30 });
      const tab = await node.connect(g.userId, 'user');
      const ack = await call(tab, 'chat:join', { chatId: g.chatId });
      expect(ack.ok).to.equal(true);
      expect(ack.heartbeatIntervalMs).to.equal(300);
      expect(ack.chat).to.include({ id: 'c1', userId: 'u1', advisorId: 'a1', status: 'pending' });
      expect(Object.keys(ack.meter).sort()).to.deep.equal(SNAPSHOT_KEYS);
      expect(ack.meter).to.include({ state: 'pending', durationSeconds: 0, freeSecondsRemaining: 30, freeSecondsAllocation: 30, creditsUsed: '0.0000', balance: '10.0000', ratePerMinute: '6.0000' });
      expect(ack.meter.secondsAffordable).to.equal(30 + 100);
      expect(Date.parse(ack.meter.serverTime)).to.be.closeTo(Date.now(), 5000);
    });

    it('forbids other people\'s chats and answers not_found for unknown ones', async () => {
      const g = await given();
      await node.api('PUT', '/v1/users/u2', {});
      await node.api('PUT', '/v1/advisors/a2', { ratePerMinute: '1' });
      const stranger = await node.connect('u2', 'user');
      const otherAdvisor = await node.connect('a2', 'advisor');
      for (const [s, event] of [[stranger, 'chat:join'], [stranger, 'chat:end'], [otherAdvisor, 'chat:join'], [otherAdvisor, 'chat:start']] as const) {
        const ack = await call(s, event, { chatId: g.chatId });
        expect(ack, `${event}`).to.deep.include({ ok: false });
        expect(ack.error.code).to.equal('forbidden');
      }
      const user = await node.connect('u1', 'user');
      expect((await call(user, 'chat:start', { chatId: g.chatId })).error.code).to.equal('forbidden');
      expect((await call(user, 'chat:join', { chatId: 'nope' })).error.code).to.equal('not_found');
      const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM conversation_time_records`);
      expect(n).to.equal(0);
    });
  });

  describe('meters', () => {
    it('arrive in every tab of the pair and on the advisor\'s socket, and nowhere else', async () => {
      const r = await running({ free: 100 });
      const stop = heartbeats(r.tab, r.chatId);
      try {
        // a second tab of the same user on another chat with the same advisor
        await node.api('POST', '/v1/chats', { id: 'c2', userId: 'u1', advisorId: 'a1' });
        const tab2 = await node.connect('u1', 'user');
        expect((await call(tab2, 'chat:join', { chatId: 'c2' })).ok).to.equal(true);
        // a tab of the same user with another advisor, and another user's tab
        await node.api('PUT', '/v1/advisors/a9', { ratePerMinute: '1' });
        await node.api('POST', '/v1/chats', { id: 'c9', userId: 'u1', advisorId: 'a9' });
        const elsewhere = await node.connect('u1', 'user');
        expect((await call(elsewhere, 'chat:join', { chatId: 'c9' })).ok).to.equal(true);
        const strangerMeters = collect(elsewhere, 'meter');

        const inTab2 = await waitFor(tab2, 'meter', (m) => m.chatId === 'c1' && m.durationSeconds >= 1);
        const onAdvisor = await waitFor(r.advisor, 'meter', (m) => m.chatId === 'c1' && m.durationSeconds >= 1);
        const inTab1 = await waitFor(r.tab, 'meter', (m) => m.chatId === 'c1' && m.durationSeconds >= 2);
        for (const m of [inTab2, onAdvisor, inTab1]) expect(m).to.include({ state: 'running', recordId: r.recordId });
        expect(inTab1.freeSecondsUsed).to.equal(inTab1.durationSeconds);
        expect(strangerMeters.filter((m) => m.chatId === 'c1')).to.deep.equal([]);
        // seq grows by one per snapshot
        const seqs = collect(r.tab, 'meter');
        await eventually(() => seqs.filter((m) => m.chatId === 'c1').length >= 3);
        const c1 = seqs.filter((m) => m.chatId === 'c1').map((m) => m.seq);
        for (let i = 1; i < c1.length; i++) expect(c1[i]).to.equal(c1[i - 1] + 1);
      } finally {
        stop();
      }
    });

    it('never reach another pair whose ids join to the same string', async () => {
      // user "acme:7" with advisor "bob" and user "acme" with advisor "7:bob"
      const r = await running({ userId: 'acme:7', advisorId: 'bob', chatId: 'victim', free: 100 });
      const other = await given({ userId: 'acme', advisorId: '7:bob', chatId: 'mine' });
      const tab = await node.connect(other.userId, 'user');
      expect((await call(tab, 'chat:join', { chatId: 'mine' })).ok).to.equal(true);
      const leaked = collect(tab, 'meter');
      const stop = heartbeats(r.tab, r.chatId);
      try {
        await waitFor(r.tab, 'meter', (m) => m.durationSeconds >= 1, 4000);
        await waitFor(r.tab, 'meter', (m) => m.durationSeconds >= 2, 4000);
      } finally {
        stop();
      }
      expect(leaked.filter((m) => m.chatId === 'victim')).to.deep.equal([]);
    });

    it('bill one second once however many tabs are open', async () => {
      const r = await running({ free: 0, balance: '100' });
      const tab2 = await node.connect('u1', 'user');
      expect((await call(tab2, 'chat:join', { chatId: r.chatId })).ok).to.equal(true);
      const stops = [heartbeats(r.tab, r.chatId), heartbeats(tab2, r.chatId)];
      const meters = collect(r.tab, 'meter');
      try {
        await waitFor(r.tab, 'meter', (x) => x.durationSeconds >= 3, 8000);
        // every snapshot: no more seconds billed than have passed since the start, on the server's own clock
        const [{ started_at: startedAt }] = await db.ds.query(`SELECT started_at FROM chats WHERE id = $1`, [r.chatId]);
        const seen = meters.filter((m) => m.chatId === r.chatId);
        expect(seen).to.not.deep.equal([]);
        for (const m of seen) {
          const elapsed = Math.floor((Date.parse(m.serverTime) - startedAt.getTime()) / 1000);
          expect(m.durationSeconds, `seq ${m.seq} at ${elapsed} s after the start`).to.be.at.most(elapsed);
        }
      } finally {
        stops.forEach((s) => s());
      }
      const [rec] = await db.ds.query(`SELECT duration, credits_used FROM conversation_time_records WHERE chat_id = $1`, [r.chatId]);
      const [{ total }] = await db.ds.query(`SELECT coalesce(sum(amount), 0)::text AS total FROM ledger_entries WHERE chat_id = $1`, [r.chatId]);
      expect(total).to.equal(rec.credits_used);
    });
  });

  describe('presence', () => {
    it('stops billing within a tick when the last tab disconnects, and resumes on return without billing the gap', async () => {
      const r = await running({ free: 0, balance: '100' });
      const stop = heartbeats(r.tab, r.chatId);
      await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= 1);
      stop();
      r.tab.disconnect();
      const away = await waitFor(r.advisor, 'meter', (m) => m.state === 'away', 2000);
      // 1.5 s of wall time later, nothing more is billed
      await eventually(async () => Date.now() - Date.parse(away.serverTime) > 1500, 3000);
      const [before] = await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = $1`, [r.chatId]);
      expect(before.duration).to.equal(away.durationSeconds);
      const back = await node.connect('u1', 'user');
      const rejoined = await call(back, 'chat:join', { chatId: r.chatId });
      expect(rejoined.meter.recordId).to.equal(r.recordId);
      expect(rejoined.meter.state).to.equal('running');
      expect(rejoined.meter.durationSeconds).to.equal(away.durationSeconds);
      const stop2 = heartbeats(back, r.chatId);
      try {
        const later = await waitFor(back, 'meter', (m) => m.durationSeconds >= away.durationSeconds + 1, 3000);
        expect(later.state).to.equal('running');
      } finally {
        stop2();
      }
    });

    it('stops billing a silent tab after interval plus grace', async () => {
      const r = await running({ free: 0, balance: '100' });
      // no heartbeats after the join: 300 + 200 ms later the meter goes away
      const away = await waitFor(r.advisor, 'meter', (m) => m.state === 'away', 3000);
      expect(away.durationSeconds).to.be.at.most(1);
      const [rec] = await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = $1`, [r.chatId]);
      expect(rec.duration).to.equal(away.durationSeconds);
      // a heartbeat brings it back
      expect((await call(r.tab, 'heartbeat', { chatId: r.chatId })).ok).to.equal(true);
      await waitFor(r.advisor, 'meter', (m) => m.state === 'running', 2000);
    });

    it('leaves no presence behind when a tab disconnects in the middle of its join', async () => {
      const g = await given({ free: 0, balance: '100' });
      await node.api('POST', `/v1/chats/${g.chatId}/start`);
      // the join's first read waits until the tab has disconnected
      const accounts = node.app.services.accounts;
      const read = accounts.getChatTracking.bind(accounts);
      let entered!: () => void;
      const joining = new Promise<void>((res) => (entered = res));
      let disconnected!: () => void;
      const gone = new Promise<void>((res) => (disconnected = res));
      accounts.getChatTracking = async (...args) => {
        entered();
        await gone;
        return read(...args);
      };
      const tab = await node.connect(g.userId, 'user');
      tab.emit('chat:join', { chatId: g.chatId });
      await joining;
      const socketId = tab.id!;
      tab.disconnect();
      await eventually(async () => !node.app.io.sockets.sockets.has(socketId), 3000);
      disconnected();
      // the delayed join finishes by refusing itself (counted as a conflict), leaving nobody present
      const conflicts = async () =>
        (await node.app.metrics.rejectedEvents.get()).values.find((v) => v.labels.code === 'conflict')?.value ?? 0;
      await eventually(async () => (await conflicts()) >= 1, 3000);
      const span = await node.app.services.presence.span(g.chatId, Date.now());
      expect(span === null || span.until <= Date.now(), JSON.stringify(span)).to.equal(true);
      const meter = (await node.api('GET', `/v1/chats/${g.chatId}/meter`)).body;
      expect(meter.state).to.equal('away');
      expect(meter.durationSeconds).to.equal(0);
    });

    it('forgets the presence of a pending chat once every tab has left, and meters it from a new join', async () => {
      const g = await given({ free: 0, balance: '100' });
      const presence = node.app.services.presence;
      const tab = await node.connect(g.userId, 'user');
      expect((await call(tab, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
      expect(await presence.span(g.chatId, Date.now())).to.not.equal(null);
      expect((await call(tab, 'chat:leave', { chatId: g.chatId })).ok).to.equal(true);
      await eventually(async () => (await presence.span(g.chatId, Date.now())) === null, 3000);
      // joined again and started: it runs as if never left
      expect((await call(tab, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
      const advisor = await node.connect(g.advisorId, 'advisor');
      const started = await call(advisor, 'chat:start', { chatId: g.chatId });
      expect(started.ok && started.meter.state, JSON.stringify(started)).to.equal('running');
    });

    it('leaving the chat stops the meter at once', async () => {
      const r = await running({ free: 0, balance: '100' });
      const stop = heartbeats(r.tab, r.chatId);
      await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= 1);
      stop();
      const away = waitFor(r.advisor, 'meter', (m) => m.state === 'away', 1000);
      expect((await call(r.tab, 'chat:leave', { chatId: r.chatId })).ok).to.equal(true);
      await away;
      expect((await call(r.tab, 'heartbeat', { chatId: r.chatId })).error.code).to.equal('conflict');
    });
  });

  describe('a leave right behind a join', () => {
    it('cancels the join: the leave is answered ok, the join conflict, and the meter does not run on', async () => {
      const r = await running({ free: 0, balance: '100' });
      const tab = await node.connect(r.userId, 'user');
      // a second tab sends a join and at once a leave, as a client leaving during its rejoin does
      const [joined, left] = await Promise.all([call(tab, 'chat:join', { chatId: r.chatId }), call(tab, 'chat:leave', { chatId: r.chatId })]);
      expect(left.ok, JSON.stringify(left)).to.equal(true);
      expect(joined.ok ? 'ok' : joined.error.code).to.equal('conflict');
      r.tab.disconnect(); // the first tab goes: nobody is present
      await waitFor(r.advisor, 'meter', (m) => m.state === 'away', 2000);
      const after = collect(r.advisor, 'meter');
      const since = Date.now();
      await eventually(() => Date.now() - since > 700); // past the heartbeat window (300 + 200 ms)
      expect(after.filter((m) => m.state === 'running'), 'the cancelled join left no presence behind').to.deep.equal([]);
      expect((await call(tab, 'heartbeat', { chatId: r.chatId })).error.code).to.equal('conflict');
    });
  });

  describe('abandonment', () => {
    it('ends a chat nobody comes back to with reason abandoned', async () => {
      await node.close();
      node = await startNode(db, { ABANDON_TIMEOUT_MS: '1200' });
      const r = await running({ free: 0, balance: '100' });
      r.tab.disconnect();
      const ended = await waitFor(r.advisor, 'chat:ended', () => true, 5000);
      expect(ended).to.include({ chatId: r.chatId, reason: 'abandoned' });
      expect(ended.meter.state).to.equal('ended');
      const [rec] = await db.ds.query(`SELECT is_active, end_reason FROM conversation_time_records WHERE chat_id = $1`, [r.chatId]);
      expect(rec).to.deep.equal({ is_active: false, end_reason: 'abandoned' });
    });
  });

  describe('credits', () => {
    it('warns with balance:low first, then ends the chat out_of_credits at zero', async () => {
      // 6 credits/min = 0.1/s; 0.3 credits = 3 s, below the 60 s threshold from the start
      const g = await given({ free: 0, balance: '0.3', rate: '6' });
      const tab = await node.connect(g.userId, 'user');
      const events: string[] = [];
      tab.on('balance:low', () => events.push('balance:low'));
      tab.on('chat:ended', () => events.push('chat:ended'));
      await call(tab, 'chat:join', { chatId: g.chatId });
      const stop = heartbeats(tab, g.chatId);
      try {
        const advisor = await node.connect(g.advisorId, 'advisor');
        const low = waitFor(tab, 'balance:low');
        await call(advisor, 'chat:start', { chatId: g.chatId });
        expect(await low).to.include({ userId: 'u1' });
        const ended = await waitFor(tab, 'chat:ended', () => true, 8000);
        expect(ended.reason).to.equal('out_of_credits');
        expect(ended.meter).to.include({ balance: '0.0000', creditsUsed: '0.3000', durationSeconds: 3 });
        expect(events).to.deep.equal(['balance:low', 'chat:ended']);
      } finally {
        stop();
      }
      expect((await node.api('GET', '/v1/users/u1')).body.balance).to.equal('0.0000');
    });

    it('sends balance:low once per user balance across two chats, and once more after a top-up that stays low', async () => {
      // 65 credits at 60/min: 65 s affordable, not yet low; two chats take 2 a second, so it is low within 3 s
      const a = await running({ free: 0, balance: '65', rate: '60' });
      const lows = collect(a.tab, 'balance:low');
      const meters = collect(a.tab, 'meter');
      const b = await running({ chatId: 'c2', advisorId: 'a2', free: 0, balance: '65', rate: '60' });
      const stopA = heartbeats(a.tab, a.chatId);
      const stopB = heartbeats(b.tab, b.chatId);
      try {
        await eventually(() => lows.length === 1, 8000);
        const warnedAt = meters.length;
        await eventually(() => meters.length >= warnedAt + 10); // a second more of both chats, still low
        expect(lows, 'one warning for the user\'s balance, not one per chat').to.have.length(1);
        const topUp = await node.api('POST', '/v1/users/u1/credits', { amount: '0.5', idempotencyKey: 'low-again' });
        expect(topUp.status).to.equal(201);
        await eventually(() => lows.length === 2);
        const toppedAt = meters.length;
        await eventually(() => meters.length >= toppedAt + 10);
        expect(lows).to.have.length(2);
      } finally {
        stopA();
        stopB();
      }
    });

    it('sends balance to the user\'s sockets after a top-up mid-chat', async () => {
      const r = await running({ free: 0, balance: '10' });
      const balance = waitFor(r.tab, 'balance');
      const res = await node.api('POST', '/v1/users/u1/credits', { amount: '5', idempotencyKey: 'topup-1' });
      expect(res.status).to.equal(201);
      const b = await balance;
      expect(b.userId).to.equal('u1');
      expect(b.balance).to.equal(res.body.balance);
    });

    it('pushes the new balance in the meters of paused and away chats after a top-up', async () => {
      const r = await running({ free: 0, balance: '10' });
      const paused = await call(r.advisor, 'chat:pause', { chatId: r.chatId });
      expect(paused.meter.state).to.equal('paused');
      const refreshed = waitFor(r.advisor, 'meter', (m) => m.chatId === r.chatId && m.balance !== paused.meter.balance, 3000);
      const res = await node.api('POST', '/v1/users/u1/credits', { amount: '5', idempotencyKey: 'topup-2' });
      const m = await refreshed;
      expect(m).to.include({ state: 'paused', balance: res.body.balance });
      expect(m.seq).to.be.greaterThan(paused.meter.seq);
    });
  });

  describe('caps', () => {
    it('refuses a socket a chat past MAX_CHATS_PER_SOCKET, and a principal a socket past MAX_SOCKETS_PER_PRINCIPAL', async () => {
      await node.close();
      node = await startNode(db, { MAX_CHATS_PER_SOCKET: '3', MAX_SOCKETS_PER_PRINCIPAL: '2' });
      for (const chatId of ['c1', 'c2', 'c3', 'c4']) await given({ chatId });
      const tab = await node.connect('u1', 'user');
      for (const chatId of ['c1', 'c2', 'c3']) expect((await call(tab, 'chat:join', { chatId })).ok).to.equal(true);
      const fourth = await call(tab, 'chat:join', { chatId: 'c4' });
      expect(fourth.error?.code).to.equal('conflict');
      expect(fourth.error.message).to.include('3 chats');
      expect((await call(tab, 'chat:join', { chatId: 'c1' })).ok, 'joining a chat it has joined is no new chat').to.equal(true);
      expect((await call(tab, 'chat:leave', { chatId: 'c3' })).ok).to.equal(true);
      expect((await call(tab, 'chat:join', { chatId: 'c4' })).ok, 'room again after a leave').to.equal(true);

      const second = await node.connect('u1', 'user');
      const token = await node.token('u1', 'user');
      const refused = await connectWith(node.url, { token }).then((s) => (s.close(), null), (e: Error) => e);
      expect(refused?.message, 'a third socket of u1').to.equal('rate_limited');
      expect((await node.connect('u2', 'user')).connected, 'another principal is not affected').to.equal(true);
      second.disconnect();
      await eventually(() => connectWith(node.url, { token }).then((s) => (s.close(), true), () => false));
    });
  });

  describe('bad input', () => {
    it('answers every client event with garbage payloads with bad_request and keeps serving', async () => {
      await node.close();
      node = await startNode(db, {}, { rateLimit: { perSocket: 10_000, perPrincipal: 10_000 } });
      const g = await given();
      const user = await node.connect(g.userId, 'user');
      const advisor = await node.connect(g.advisorId, 'advisor');
      const garbage: unknown[] = [undefined, null, 42, 'c1', [], {}, { chatId: 42 }, { chatId: '' }, { chatId: 'x'.repeat(65) }, { chatId: 'bad id!' }, { chatId: { $ne: null } }];
      for (const event of ['chat:join', 'chat:leave', 'heartbeat', 'chat:end']) {
        for (const p of garbage) {
          const ack = await call(user, event, p);
          expect(ack.ok, `${event} ${JSON.stringify(p)}`).to.equal(false);
          expect(ack.error.code, `${event} ${JSON.stringify(p)}`).to.equal('bad_request');
        }
      }
      for (const event of ['chat:start', 'chat:pause', 'chat:resume']) {
        for (const p of garbage) expect((await call(advisor, event, p)).error.code, `${event} ${JSON.stringify(p)}`).to.equal('bad_request');
      }
      expect((await call(user, 'no:such:event', { chatId: 'c1' })).error.code).to.equal('bad_request');
      // an event without an ack is handled and not answered; the socket stays up
      (user as unknown as { emit(e: string, p: unknown): void }).emit('chat:join', 'garbage');
      expect((await call(user, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
      expect(user.connected).to.equal(true);
      const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM ledger_entries WHERE type = 'charge'`);
      expect(n).to.equal(0);
    });

    it('cuts a socket that sends a huge payload, and the server keeps serving', async () => {
      const g = await given();
      const user = await node.connect(g.userId, 'user');
      const gone = new Promise((res) => user.once('disconnect', res));
      user.emit('chat:join', { chatId: 'x'.repeat(100_000) });
      await gone;
      const again = await node.connect(g.userId, 'user');
      expect((await call(again, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
    });

    it('rate limits a socket that floods events', async () => {
      await node.close();
      node = await startNode(db, {}, { rateLimit: { perSocket: 5, perPrincipal: 100 } });
      const g = await given();
      const user = await node.connect(g.userId, 'user');
      const acks = await Promise.all(Array.from({ length: 12 }, () => call(user, 'chat:join', { chatId: g.chatId })));
      const codes = acks.map((a) => (a.ok ? 'ok' : a.error.code));
      expect(codes.filter((c) => c === 'ok').length).to.equal(5);
      expect(codes.filter((c) => c === 'rate_limited').length).to.equal(7);
    });
  });

  describe('the order of refusals (not_found, then forbidden, then conflict)', () => {
    it('answers a heartbeat or leave of a chat not joined by what is wrong first', async () => {
      const g = await given();
      await given({ chatId: 'theirs', userId: 'u2', advisorId: 'a2' });
      const user = await node.connect(g.userId, 'user');
      const advisor = await node.connect(g.advisorId, 'advisor');
      const code = async (s: ClientSocket, event: string, chatId: string) => (await call(s, event, { chatId })).error?.code;
      for (const event of ['heartbeat', 'chat:leave']) {
        expect(await code(user, event, 'nope'), `${event} of an unknown chat`).to.equal('not_found');
        expect(await code(user, event, 'theirs'), `${event} of another user's chat`).to.equal('forbidden');
        expect(await code(user, event, g.chatId), `${event} of an own chat not joined`).to.equal('conflict');
      }
      expect(await code(advisor, 'heartbeat', 'nope')).to.equal('not_found');
      expect(await code(advisor, 'heartbeat', g.chatId), 'an advisor never heartbeats').to.equal('forbidden');
      expect((await call(advisor, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
      expect(await code(advisor, 'heartbeat', g.chatId), 'joined or not').to.equal('forbidden');
      // commands: an unknown chat is not_found even for a user, who may not start chats
      expect(await code(user, 'chat:start', 'nope')).to.equal('not_found');
      expect(await code(user, 'chat:start', g.chatId)).to.equal('forbidden');
      expect(await code(advisor, 'chat:start', 'theirs')).to.equal('forbidden');
    });
  });

  describe('dashboard', () => {
    it('lists the advisor\'s pending and active chats with their meters, oldest first, and refuses a user', async () => {
      const g = await given({ chatId: 'c1', free: 0, balance: '100' });
      await given({ chatId: 'c2', userId: 'u2' });
      await given({ chatId: 'c3', userId: 'u3' });
      await given({ chatId: 'other', userId: 'u4', advisorId: 'a2' });
      await node.api('POST', '/v1/chats/c1/start');
      await node.api('POST', '/v1/chats/c3/end');
      const advisor = await node.connect(g.advisorId, 'advisor');
      const listed = await call(advisor, 'advisor:chats', {});
      expect(listed.ok, JSON.stringify(listed)).to.equal(true);
      expect(listed.chats.map((c: any) => [c.chat.id, c.chat.status, c.meter?.state ?? null])).to.deep.equal([
        ['c1', 'active', 'away'],
        ['c2', 'pending', null],
      ]);
      expect(Object.keys(listed.chats[0].meter).sort()).to.deep.equal(SNAPSHOT_KEYS);
      // no payload at all is the same; anything else is bad_request
      expect((await call(advisor, 'advisor:chats')).chats).to.have.length(2);
      expect((await call(advisor, 'advisor:chats', { chatId: 'c1' })).error.code).to.equal('bad_request');
      const user = await node.connect(g.userId, 'user');
      expect((await call(user, 'advisor:chats', {})).error.code).to.equal('forbidden');
    });

    it('pushes chat:created to the advisor\'s sockets once, not on a repeated create, and not to others', async () => {
      await given({ chatId: 'seed' });
      const advisor = await node.connect('a1', 'advisor');
      const otherAdvisor = await node.connect('a2', 'advisor');
      const user = await node.connect('u1', 'user');
      const created = collect(advisor, 'chat:created');
      const elsewhere = [...collect(otherAdvisor, 'chat:created'), ...collect(user, 'chat:created')];
      expect((await node.api('POST', '/v1/chats', { id: 'fresh', userId: 'u1', advisorId: 'a1' })).status).to.equal(201);
      await eventually(async () => created.length === 1, 3000);
      expect(created[0].chat).to.include({ id: 'fresh', userId: 'u1', advisorId: 'a1', status: 'pending' });
      expect((await node.api('POST', '/v1/chats', { id: 'fresh', userId: 'u1', advisorId: 'a1' })).status).to.equal(200);
      // the next push proves the repeat sent none
      await node.api('POST', '/v1/chats', { id: 'fresh2', userId: 'u1', advisorId: 'a1' });
      await eventually(async () => created.length === 2, 3000);
      expect(created.map((c) => c.chat.id)).to.deep.equal(['fresh', 'fresh2']);
      expect(elsewhere).to.deep.equal([]);
    });
  });

  describe('advisor commands', () => {
    it('pause stops the meter and resume restarts it; ends are pushed to the pair and the advisor', async () => {
      const r = await running({ free: 0, balance: '100' });
      const stop = heartbeats(r.tab, r.chatId);
      try {
        await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= 1);
        const paused = await call(r.advisor, 'chat:pause', { chatId: r.chatId });
        expect(paused.meter.state).to.equal('paused');
        expect(paused.chat.status).to.equal('active');
        await eventually(async () => Date.now() - Date.parse(paused.meter.serverTime) > 1300, 3000);
        const still = await node.api('GET', `/v1/chats/${r.chatId}`);
        expect(still.body.meter.durationSeconds).to.equal(paused.meter.durationSeconds);
        const resumed = await call(r.advisor, 'chat:resume', { chatId: r.chatId });
        expect(resumed.meter.state).to.equal('running');
        await waitFor(r.tab, 'meter', (m) => m.durationSeconds > paused.meter.durationSeconds, 3000);
        const endedInTab = waitFor(r.tab, 'chat:ended');
        const ended = await call(r.tab, 'chat:end', { chatId: r.chatId });
        expect(ended.chat).to.include({ status: 'ended', endReason: 'ended_by_user' });
        expect((await endedInTab).reason).to.equal('ended_by_user');
        // joining an ended chat succeeds and shows the ended meter
        const rejoin = await call(r.tab, 'chat:join', { chatId: r.chatId });
        expect(rejoin.meter.state).to.equal('ended');
        expect((await call(r.advisor, 'chat:start', { chatId: r.chatId })).error.code).to.equal('conflict');
      } finally {
        stop();
      }
    });
  });

  describe('heartbeat and advisor end', () => {
    it('acks a heartbeat with the server time, refuses it from the advisor, and lets the advisor end the chat', async () => {
      const r = await running({ free: 0, balance: '100' });
      const hb = await call(r.tab, 'heartbeat', { chatId: r.chatId });
      expect(Object.keys(hb).sort()).to.deep.equal(['ok', 'serverTime']);
      expect(Date.parse(hb.serverTime)).to.be.closeTo(Date.now(), 5000);
      expect((await call(r.advisor, 'heartbeat', { chatId: r.chatId })).error.code).to.equal('forbidden');
      const advisorJoin = await call(r.advisor, 'chat:join', { chatId: r.chatId });
      expect(advisorJoin.ok).to.equal(true);
      expect(advisorJoin.meter.recordId).to.equal(r.recordId);
      const endedInTab = waitFor(r.tab, 'chat:ended');
      const ended = await call(r.advisor, 'chat:end', { chatId: r.chatId });
      expect(ended.chat).to.include({ status: 'ended', endReason: 'ended_by_advisor' });
      const pushed = await endedInTab;
      expect(pushed).to.include({ chatId: r.chatId, reason: 'ended_by_advisor' });
      expect(pushed.meter.state).to.equal('ended');
      // ending again is a no-op that still answers with the ended chat
      expect((await call(r.tab, 'chat:end', { chatId: r.chatId })).chat.endReason).to.equal('ended_by_advisor');
    });
  });

  describe('restart', () => {
    it('picks up an active chat: the returning user goes on with the same record, the downtime unbilled', async () => {
      const r = await running({ free: 0, balance: '100' });
      const stop = heartbeats(r.tab, r.chatId);
      const before = await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= 1);
      stop();
      await node.close();
      const downAt = Date.now();
      await new Promise((res) => setTimeout(res, 1500));
      node = await startNode(db);
      const [settled] = await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = $1`, [r.chatId]);
      const tab = await node.connect('u1', 'user');
      const joined = await call(tab, 'chat:join', { chatId: r.chatId });
      expect(joined.meter.recordId).to.equal(r.recordId);
      expect(joined.meter.durationSeconds).to.equal(settled.duration);
      expect(settled.duration).to.be.at.least(before.durationSeconds);
      // at most what ran before the shutdown: the 1.5 s of downtime is not billed
      expect(settled.duration).to.be.at.most(Math.ceil((downAt - Date.parse(before.serverTime)) / 1000) + before.durationSeconds);
      const stop2 = heartbeats(tab, r.chatId);
      try {
        await waitFor(tab, 'meter', (m) => m.durationSeconds >= settled.duration + 1 && m.state === 'running', 3000);
      } finally {
        stop2();
      }
    });
  });
});
