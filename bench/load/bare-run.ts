/**
 * The bare socket.io baseline under the load run: `baseline-server.ts` in a
 * process of its own, after chatmeter (never beside it), with the same sockets,
 * the same phases and chatmeter's own snapshot as its payload.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { MeterSnapshot } from '../../client-sdk/src/protocol.js';
import { type OnAbandon, socketsOf } from './chatmeter-run.js';
import type { LoadConfig } from './config.js';
import { planOf } from './http-setup.js';
import type { FromBaseline, ToBaseline } from './messages.js';
import { type PhaseResult, runPhases } from './phases.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SERVER = fileURLToPath(new URL('./baseline-server.ts', import.meta.url));

/** A snapshot shaped like chatmeter's, for a run without a chatmeter snapshot to copy. */
function fallbackTemplate(): MeterSnapshot {
  return {
    chatId: 'lc1',
    recordId: '00000000-0000-4000-8000-000000000000',
    userId: 'lu1',
    advisorId: 'la1',
    state: 'running',
    durationSeconds: 0,
    freeSecondsUsed: 0,
    freeSecondsRemaining: 180,
    freeSecondsAllocation: 180,
    creditsUsed: '0.0000',
    balance: '110.0000',
    ratePerMinute: '1.0000',
    secondsAffordable: 6780,
    seq: 1,
    serverTime: new Date().toISOString(),
  };
}

/** What the baseline run measured. */
export interface BareRun {
  phases: PhaseResult;
  templateFromChatmeter: boolean;
}

/** One run of the bare baseline, copying `template` (a chatmeter snapshot) for its meters. */
export async function runBare(cfg: LoadConfig, template: MeterSnapshot | null, log: (line: string) => void, onAbandon: OnAbandon): Promise<BareRun> {
  const plan = planOf(cfg);
  const child = fork(SERVER, [], { cwd: ROOT, execArgv: [...cfg.bareArgs, '--import', 'tsx'], serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const forget = onAbandon(async () => void child.kill('SIGKILL'));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('bare server: not listening within 30 s')), 30_000);
      child.on('message', (m: FromBaseline) => {
        clearTimeout(timer);
        if (m.type === 'listening') resolve(m.port);
        else reject(new Error(`bare server: ${m.message}`));
      });
      child.once('exit', (code) => reject(new Error(`bare server exited (${code})`)));
      child.send({
        type: 'setup',
        setup: { port: 0, chats: plan.chats, template: template ?? fallbackTemplate(), tickMs: cfg.tickMs, heartbeatIntervalMs: cfg.heartbeatIntervalMs },
      } satisfies ToBaseline);
    });
    log(`bare socket.io: listening on ${port}`);
    // it reads the tokens without checking them: any secret will do
    const sockets = await socketsOf(plan, [`http://127.0.0.1:${port}`], cfg, randomBytes(32).toString('base64url'));
    const phases = await runPhases(
      { name: 'bare socket.io', pids: [child.pid!], databasePids: async () => [], sharedPids: [] },
      sockets,
      cfg,
      log,
    );
    return { phases, templateFromChatmeter: template !== null };
  } finally {
    forget();
    child.removeAllListeners('exit');
    if (child.exitCode === null && child.signalCode === null) child.kill();
  }
}
