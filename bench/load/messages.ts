/**
 * The messages between the load run's orchestrator (`load.ts`) and its child
 * processes: the client workers (`clients.ts`) and the bare baseline server
 * (`baseline-server.ts`). Sent over the fork IPC channel with `advanced`
 * serialization, so arrays of samples travel as they are.
 */
import type { ChatView, MeterSnapshot } from '../../client-sdk/src/protocol.js';

/** One socket a client worker opens: a user's tab of one chat, or an advisor's dashboard. */
export interface SocketSpec {
  role: 'user' | 'advisor';
  token: string;
  url: string;
  /** Index of the node it connects to (two-node mode), for per-node figures. */
  node: number;
  /** The chat a user tab joins; null for a dashboard (it asks `advisor:chats` instead). */
  chatId: string | null;
}

/** What one worker does. */
export interface WorkerSetup {
  sockets: SocketSpec[];
  /** Connects per second this worker opens in the storm. */
  rate: number;
  /** This worker's first connect, after the storm's start (ms): workers interleave into one even stream. */
  offsetMs: number;
  /** Bounds every connect and ack. */
  ackTimeoutMs: number;
  /** Heartbeat period of a user tab; null takes the join ack's `heartbeatIntervalMs`, as SPEC says. */
  heartbeatEveryMs: number | null;
  /** The server's meter period, for the interval jitter. */
  tickMs: number;
  /** How many nodes the sockets spread over. */
  nodes: number;
}

export type ToWorker =
  | { type: 'setup'; setup: WorkerSetup }
  | { type: 'storm'; startAt: number }
  | { type: 'window'; start: number; end: number }
  | { type: 'report' }
  | { type: 'drop'; at: number; timeoutMs: number; delayMs: number }
  | { type: 'close' };

/** The connect storm as one worker saw it. Times are epoch ms, latencies ms. */
export interface StormResult {
  attempted: number;
  connected: number;
  /** Sockets that connected and whose join (or dashboard) was acknowledged ok. */
  joined: number;
  joinedPerNode: number[];
  firstAttemptAt: number;
  firstConnectedAt: number;
  lastConnectedAt: number;
  lastJoinedAt: number;
  connectMs: number[];
  /** `chat:join` ack of user tabs. */
  joinMs: number[];
  /** `advisor:chats` ack of dashboards. */
  dashboardMs: number[];
  errors: Record<string, number>;
}

/** The steady window as one worker saw it. */
export interface WindowResult {
  /** Meters each user tab received in the window (its own chat's). */
  tabMeters: number[];
  /** Meters each dashboard received in the window (all its chats'). */
  dashboardMeters: number[];
  /** Every meter received in the window, and by the sockets of each node. */
  received: number;
  receivedPerNode: number[];
  /** Meters received in each 100 ms of the window. */
  per100ms: number[];
  /** |interval - tick| between consecutive meters of one chat at one socket, both in the window (ms). */
  jitterMs: number[];
  /** Arrival minus the snapshot's serverTime (ms). */
  lagMs: number[];
  /** Meters a socket never saw: seq jumps beyond +1 (from the meter before, which may precede the window). */
  seqGaps: number;
  /** Meters whose seq was not above the last seen. */
  seqRepeats: number;
  /** Meters in a state other than running. */
  notRunning: number;
  /** JSON bytes of a sample of the meters. */
  payloadBytes: { sum: number; n: number; min: number; max: number };
  heartbeats: { sent: number; errors: number; ackMs: number[] };
  unexpectedDisconnects: number;
  /** The worker's own CPU in the window (ms) and its resident memory (MB). */
  cpuMs: number;
  rssMB: number;
}

/** The reconnect after every transport dropped at once. */
export interface ReconnectResult {
  dropped: number;
  rejoined: number;
  /** From the drop to each socket's rejoin ack (ms). */
  rejoinMs: number[];
  lastRejoinedAt: number;
  attempts: number;
  errors: Record<string, number>;
}

export type FromWorker =
  | { type: 'ready' }
  | { type: 'storm'; result: StormResult }
  | { type: 'window'; result: WindowResult }
  | { type: 'reconnected'; result: ReconnectResult }
  | { type: 'closed' }
  | { type: 'fatal'; message: string };

/** A chat the bare server pushes meters for. */
export interface BareChat {
  id: string;
  userId: string;
  advisorId: string;
}

/** What the bare baseline server serves. */
export interface BaselineSetup {
  port: number;
  chats: BareChat[];
  /** A real chatmeter snapshot: the bare meters copy its fields, so their JSON has its size and shape. */
  template: MeterSnapshot;
  tickMs: number;
  heartbeatIntervalMs: number;
}

export type ToBaseline = { type: 'setup'; setup: BaselineSetup };
export type FromBaseline = { type: 'listening'; port: number } | { type: 'fatal'; message: string };
