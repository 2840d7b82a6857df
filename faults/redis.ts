/**
 * The run's own Redis (never the shared one): a `redis-server` on a free port,
 * without persistence, that a fault stops and starts; and a TCP proxy in front of
 * it that can add latency, through which every node talks to it.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { freePort } from '../test/support/ports.js';
import { eventually } from '../test/support/server.js';

/** A redis-server of the run's own. */
export interface OwnRedis {
  port: number;
  /** Kills it (SIGKILL: whatever it held is gone, as after a crash). */
  stop(): Promise<void>;
  /** Starts it again on the same port; resolves once it answers PING. */
  start(): Promise<void>;
}

export async function startOwnRedis(): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  const pong = () => spawnSync('redis-cli', ['-p', String(port), 'ping']).stdout?.toString().includes('PONG') ?? false;
  const redis: OwnRedis = {
    port,
    async start() {
      child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', '/tmp'], {
        stdio: 'ignore',
      });
      await eventually(pong, 10_000, 50);
    },
    async stop() {
      const c = child;
      child = null;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await exited;
    },
  };
  await redis.start();
  return redis;
}

/** A TCP proxy that delays every chunk, both ways, by `delayMs` (0: none), keeping their order. */
export interface LatencyProxy {
  port: number;
  setDelay(ms: number): void;
  close(): Promise<void>;
}

export async function startLatencyProxy(targetPort: number): Promise<LatencyProxy> {
  let delayMs = 0;
  const open = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      open.add(s);
      s.on('close', () => {
        open.delete(s);
        client.destroy();
        upstream.destroy();
      });
      s.on('error', () => s.destroy());
    }
    relay(client, upstream, () => delayMs);
    relay(upstream, client, () => delayMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    setDelay(ms) {
      delayMs = ms;
    },
    async close() {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Copies `from` to `to`, each chunk `delay()` ms after it arrived, never out of order. */
function relay(from: Socket, to: Socket, delay: () => number): void {
  const queue: Array<{ at: number; chunk: Buffer }> = [];
  let timer: NodeJS.Timeout | null = null;
  const drain = () => {
    timer = null;
    const now = Date.now();
    while (queue.length && queue[0]!.at <= now) {
      const { chunk } = queue.shift()!;
      if (!to.destroyed) to.write(chunk);
    }
    if (queue.length) timer = setTimeout(drain, queue[0]!.at - now);
  };
  from.on('data', (chunk: Buffer) => {
    const ms = delay();
    if (ms === 0 && queue.length === 0) {
      if (!to.destroyed) to.write(chunk);
      return;
    }
    queue.push({ at: Date.now() + ms, chunk });
    timer ??= setTimeout(drain, Math.max(0, queue[0]!.at - Date.now()));
  });
}
