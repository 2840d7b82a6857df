/**
 * The load mode of `npm run bench` (issue 7 item 7): chatmeter under the
 * integrator's load, beside a bare socket.io server doing only the transport part,
 * with the same clients in the same run. Prints the table (each figure for
 * chatmeter and for bare socket.io, the target, the ratio and whether it is met) and
 * writes the whole result as JSON to bench/results/. It reports; it never fails
 * because the machine is slow (exit 0 whatever the figures; 1 when the run itself
 * broke, 2 on a bad configuration, a too-low `ulimit -n` or the watchdog).
 *
 * Each run: chatmeter as `npm start` runs it, in a process of its own, on a
 * throwaway database of DATABASE_URL's server (PGlite without it); its users,
 * advisors, top-ups and chats made over HTTP, the chats started with 32 requests in
 * flight (the start-throughput row); then the client workers (`clients.ts`,
 * BENCH_CLIENTS processes) open two tabs per chat and a dashboard per 50 chats at
 * BENCH_RATE connects a second in all, each tab joining its chat and heartbeating;
 * BENCH_SECONDS of steady state; every transport dropped at once and reconnected;
 * every socket closed and the idle node measured (`phases.ts`). Then the same
 * clients against `baseline-server.ts`, never beside chatmeter. With BENCH_NODES=2 a
 * run of two nodes over Redis follows the one-node run (each user's two tabs on
 * different nodes), compared with it; the baseline is then skipped unless
 * BENCH_BASELINE=1. Sizes and timings: `config.ts`.
 *
 * @example DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:load
 * @example DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres BENCH_CHATS=20 BENCH_SECONDS=3 npm run bench:load   # a smoke run
 * @example DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres BENCH_NODES=2 BENCH_CHATS=3000 npm run bench:load
 */
import { availableParallelism } from 'node:os';
import { type BareRun, runBare } from './bare-run.js';
import { type ChatmeterRun, type OnAbandon, runChatmeter } from './chatmeter-run.js';
import { type LoadConfig, loadConfig, socketCount } from './config.js';
import { openFileLimit } from './procfs.js';
import { notesOf, report } from './report.js';
import { round } from './stats.js';

/** File descriptors a server process needs beside one end of each socket (database pool, Redis, files). */
const FD_HEADROOM = 300;

async function main(): Promise<number> {
  const began = performance.now();
  let cfg: LoadConfig;
  try {
    cfg = loadConfig();
  } catch (err) {
    process.stderr.write(`load bench: ${(err as Error).message}\n`);
    return 2;
  }
  const sockets = socketCount(cfg);
  const fdLimit = openFileLimit();
  // one-node runs put every socket's server end in one process
  if (fdLimit !== null && fdLimit < sockets + FD_HEADROOM) {
    process.stderr.write(
      `load bench: the open-file limit (ulimit -n) is ${fdLimit}, but a chatmeter node holds one end of each of the ${sockets} sockets ` +
        `and needs about ${sockets + FD_HEADROOM}: raise it (ulimit -n ${Math.max(20_000, sockets + FD_HEADROOM)}) or lower BENCH_CHATS\n`,
    );
    return 2;
  }
  const log = (line: string) => process.stderr.write(`[load ${round((performance.now() - began) / 1000)} s] ${line}\n`);

  // whatever happens (the watchdog, Ctrl-C), child processes go and throwaway databases are dropped
  const cleanups = new Set<() => Promise<void>>();
  const onAbandon: OnAbandon = (fn) => {
    cleanups.add(fn);
    return () => cleanups.delete(fn);
  };
  const abandon = async (why: string, code: number) => {
    process.stderr.write(`load bench: ${why}; cleaning up\n`);
    await Promise.allSettled([...cleanups].map((fn) => fn()));
    process.exit(code);
  };
  setTimeout(() => void abandon(`gave up after ${cfg.deadlineSeconds} s (BENCH_DEADLINE_SECONDS)`, 2), cfg.deadlineSeconds * 1000).unref();
  process.once('SIGINT', () => void abandon('interrupted', 130));
  process.once('SIGTERM', () => void abandon('terminated', 143));

  const startedAt = new Date().toISOString();
  log(`${sockets} sockets (${cfg.chats} chats); watchdog ${cfg.deadlineSeconds} s`);
  const chatmeter = await runChatmeter(cfg, 1, log, onAbandon);
  let twoNodes: ChatmeterRun | null = null;
  if (cfg.nodes === 2) twoNodes = await runChatmeter(cfg, 2, log, onAbandon);
  let bare: BareRun | null = null;
  if (cfg.baseline) bare = await runBare(cfg, chatmeter.template, log, onAbandon);

  const result = {
    bench: 'load' as const,
    startedAt,
    totalSeconds: round((performance.now() - began) / 1000),
    machine: { cores: availableParallelism(), node: process.version, openFileLimit: fdLimit === Infinity ? null : fdLimit },
    config: cfg,
    chatmeter,
    twoNodes,
    bare,
  };
  report({ ...result, notes: notesOf(result) });
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`load bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
