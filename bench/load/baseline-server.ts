/**
 * The bare baseline of the load run: a plain socket.io 4.8 server doing only the
 * transport part of chatmeter's job, so the run can say what chatmeter costs on
 * top of socket.io itself. No database, no validation, no billing.
 *
 * It accepts any `auth.token` (it reads `sub` and `role` from the JWT's payload
 * without checking the signature), joins the same rooms as chatmeter
 * (`user:`/`advisor:` on connect; `chat:` and `pair:` on `chat:join`), answers
 * `chat:join`, `heartbeat` and `advisor:chats` with acks shaped like chatmeter's,
 * and every tick pushes one `meter` per chat whose user has a tab joined, to the
 * pair's and the advisor's rooms, as chatmeter's publisher does: a copy of a real
 * chatmeter snapshot (same fields, same size) with this chat's ids, `seq` going up
 * by one per chat and a fresh `serverTime`. The chats are spread over the tick in
 * 10 phase buckets on a drift-free schedule, as chatmeter's ticker spreads them.
 *
 * Runs only as a child of `load.ts` (setup over IPC, see `messages.ts`).
 */
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { Server, type Socket } from 'socket.io';
import type { ChatView, ClientToServerEvents, MeterSnapshot, ServerToClientEvents } from '../../client-sdk/src/protocol.js';
import type { BareChat, BaselineSetup, FromBaseline, ToBaseline } from './messages.js';

const BUCKETS = 10;

interface BareSocketData {
  sub: string;
  role: 'user' | 'advisor';
  chats: Set<string>;
}
interface BareState {
  chat: BareChat;
  view: ChatView;
  recordId: string;
  seq: number;
  duration: number;
  /** User sockets joined to this chat: it "runs" while there is one. */
  present: number;
}

const send = (m: FromBaseline) => process.send!(m);

/** `sub` and `role` of a JWT, unverified; null when it is not one. */
function claimsOf(token: unknown): { sub: string; role: 'user' | 'advisor' } | null {
  if (typeof token !== 'string') return null;
  try {
    const p = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { sub?: unknown; role?: unknown };
    if (typeof p.sub !== 'string' || (p.role !== 'user' && p.role !== 'advisor')) return null;
    return { sub: p.sub, role: p.role };
  } catch {
    return null;
  }
}

function serve(setup: BaselineSetup): Promise<number> {
  const startedAt = new Date().toISOString();
  const chats = new Map<string, BareState>();
  const byAdvisor = new Map<string, BareState[]>();
  const buckets: BareState[][] = Array.from({ length: BUCKETS }, () => []);
  setup.chats.forEach((chat, i) => {
    const st: BareState = {
      chat,
      view: { id: chat.id, userId: chat.userId, advisorId: chat.advisorId, status: 'active', endReason: null, createdAt: startedAt, startedAt, endedAt: null },
      recordId: randomUUID(),
      seq: 0,
      duration: 0,
      present: 0,
    };
    chats.set(chat.id, st);
    byAdvisor.set(chat.advisorId, [...(byAdvisor.get(chat.advisorId) ?? []), st]);
    buckets[i % BUCKETS]!.push(st);
  });
  const snapshot = (st: BareState): MeterSnapshot => ({
    ...setup.template,
    chatId: st.chat.id,
    recordId: st.recordId,
    userId: st.chat.userId,
    advisorId: st.chat.advisorId,
    state: st.present > 0 ? 'running' : 'away',
    durationSeconds: st.duration,
    seq: st.seq,
    serverTime: new Date().toISOString(),
  });

  const http = createServer();
  const io = new Server<ClientToServerEvents, ServerToClientEvents, Record<string, never>, BareSocketData>(http);
  io.use((socket, next) => {
    const claims = claimsOf((socket.handshake.auth as { token?: unknown } | undefined)?.token);
    if (!claims) return next(new Error('unauthorized'));
    socket.data.sub = claims.sub;
    socket.data.role = claims.role;
    socket.data.chats = new Set();
    next();
  });
  const notFound = { ok: false as const, error: { code: 'not_found' as const, message: 'no such chat' } };
  io.on('connection', (socket: Socket<ClientToServerEvents, ServerToClientEvents, Record<string, never>, BareSocketData>) => {
    const { sub, role } = socket.data;
    void socket.join(role === 'user' ? `user:${sub}` : `advisor:${sub}`);
    socket.on('chat:join', (p, ack) => {
      const st = chats.get((p as { chatId?: string } | undefined)?.chatId ?? '');
      if (!st) return ack?.(notFound);
      void socket.join(role === 'user' ? [`chat:${st.chat.id}`, `pair:${st.chat.userId}/${st.chat.advisorId}`] : [`chat:${st.chat.id}`]);
      if (role === 'user' && !socket.data.chats.has(st.chat.id)) {
        socket.data.chats.add(st.chat.id);
        st.present++;
      }
      ack?.({ ok: true, chat: st.view, meter: snapshot(st), heartbeatIntervalMs: setup.heartbeatIntervalMs });
    });
    socket.on('heartbeat', (p, ack) => {
      if (!chats.has((p as { chatId?: string } | undefined)?.chatId ?? '')) return ack?.(notFound);
      ack?.({ ok: true, serverTime: new Date().toISOString() });
    });
    socket.on('advisor:chats', (_p, ack) => {
      ack?.({ ok: true, chats: (byAdvisor.get(sub) ?? []).map((st) => ({ chat: st.view, meter: snapshot(st) })) });
    });
    socket.on('disconnect', () => {
      for (const id of socket.data.chats) chats.get(id)!.present--;
    });
  });

  // drift-free: slot k is due at t0 + k × tick / BUCKETS, whatever the earlier slots took
  const t0 = Date.now();
  let slot = 0;
  const tick = () => {
    for (const st of buckets[slot % BUCKETS]!) {
      if (st.present === 0) continue;
      st.seq++;
      st.duration++;
      io.to([`pair:${st.chat.userId}/${st.chat.advisorId}`, `advisor:${st.chat.advisorId}`]).emit('meter', snapshot(st));
    }
    slot++;
    setTimeout(tick, Math.max(0, t0 + (slot * setup.tickMs) / BUCKETS - Date.now()));
  };
  setTimeout(tick, setup.tickMs / BUCKETS);

  return new Promise((resolve, reject) => {
    http.once('error', reject);
    http.listen(setup.port, '127.0.0.1', () => resolve((http.address() as { port: number }).port));
  });
}

process.on('disconnect', () => process.exit(0));
// exiting (not dying of the signal) lets `--cpu-prof` in BENCH_BARE_ARGS write its profile
process.on('SIGTERM', () => process.exit(0));
process.once('message', (m: ToBaseline) => {
  serve(m.setup).then(
    (port) => send({ type: 'listening', port }),
    (err: unknown) => {
      send({ type: 'fatal', message: String((err as Error)?.stack ?? err) });
      process.exit(1);
    },
  );
});
