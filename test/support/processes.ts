import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { FAST_ENV, type ClientSocket, callApi, connectWith, eventually } from './server.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A node as `npm start` runs it, in a child process, with its JSON log lines collected. */
export interface NodeProcess {
  child: ChildProcess;
  /** The node's id, as every log line carries it. */
  nodeId: string;
  port: number;
  url: string;
  lines: Array<Record<string, unknown>>;
  /** Resolves with the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** Calls the HTTP API with the test API key. */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  /** A connected socket of `sub` on this node. */
  connect(sub: string, role: 'user' | 'advisor', extra?: Record<string, unknown>): Promise<ClientSocket>;
  /** The node's `/metrics` value of a counter or gauge (0 when absent). */
  metric(name: string): Promise<number>;
  kill(signal: NodeJS.Signals): void;
}

/** Spawns `server/main.ts` with FAST_ENV plus `env`; resolves once it listens (rejects if it exits first). */
export async function spawnNode(env: Record<string, string>): Promise<NodeProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...FAST_ENV, LOG_LEVEL: 'info', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, unknown>> = [];
  let stderr = '';
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      lines.push(JSON.parse(line));
    } catch {
      // the banner is not JSON
    }
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let code: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (c) => {
      code = c;
      resolve(c);
    }),
  );
  const listening = await eventually(() => {
    if (code !== undefined) throw new Error(`node exited with ${code} before listening: ${stderr.slice(-2000)}`);
    return lines.find((l) => l.msg === 'listening');
  }, 30_000, 50).catch((err: unknown) => {
    if (child.exitCode === null) child.kill('SIGKILL');
    throw err;
  });
  const port = listening.port as number;
  const url = `http://127.0.0.1:${port}`;
  const api: NodeProcess['api'] = (method, path, body) => callApi(url, FAST_ENV.CHATMETER_API_KEY, method, path, body);
  return {
    child,
    nodeId: listening.node as string,
    port,
    url,
    lines,
    exited,
    api,
    async connect(sub, role, extra = {}) {
      const { body } = await api('POST', '/v1/tokens', { sub, role });
      return connectWith(url, { token: body.token }, extra);
    },
    async metric(name) {
      const text = await (await fetch(`${url}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${name} `));
      return line ? Number(line.split(' ')[1]) : 0;
    },
    kill(signal) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** Kills every node still running (SIGCONT first, in case one is stopped). */
export async function killAll(nodes: NodeProcess[]): Promise<void> {
  await Promise.all(
    nodes.map(async (n) => {
      if (n.child.exitCode !== null || n.child.signalCode !== null) return;
      n.child.kill('SIGCONT');
      n.child.kill('SIGKILL');
      await n.exited;
    }),
  );
}
