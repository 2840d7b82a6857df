/**
 * The load run's data, made as an integrator makes it: over chatmeter's HTTP API
 * (SPEC 3), with the API key. Advisors, users with an opening balance, a top-up
 * each, one pending chat per user, then every chat started with
 * `POST /v1/chats/:id/start`, `startConcurrency` requests in flight: the table's
 * start-throughput row.
 */
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { LoadConfig } from './config.js';
import { type Dist, countError, dist, round } from './stats.js';

/** The ids of a run: user i has chat i; advisor j has chats (j-1)×per+1 .. j×per. */
export interface LoadPlan {
  chats: Array<{ id: string; userId: string; advisorId: string }>;
  advisors: Array<{ id: string; chatIds: string[] }>;
}

/** The ids of a run of `cfg`'s size. */
export function planOf(cfg: LoadConfig): LoadPlan {
  const chats = Array.from({ length: cfg.chats }, (_, i) => ({
    id: `lc${i + 1}`,
    userId: `lu${i + 1}`,
    advisorId: `la${Math.floor(i / cfg.chatsPerAdvisor) + 1}`,
  }));
  const advisors = new Map<string, string[]>();
  for (const c of chats) advisors.set(c.advisorId, [...(advisors.get(c.advisorId) ?? []), c.id]);
  return { chats, advisors: [...advisors].map(([id, chatIds]) => ({ id, chatIds })) };
}

/** How the setup went. */
export interface SetupResult {
  /** Wall time of each step (ms). */
  stepMs: Record<string, number>;
  start: { requests: number; ok: number; perSecond: number; concurrency: number; latencyMs: Dist; errors: Record<string, number> };
  errors: Record<string, number>;
}

/** One JSON request with the API key over a kept-alive connection; rejects on a non-2xx answer. */
function call(agent: Agent, base: string, apiKey: string, method: string, path: string, body: unknown, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      `${base}${path}`,
      {
        method,
        agent,
        timeout: timeoutMs,
        headers: { authorization: `Bearer ${apiKey}`, ...(data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {}) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          if (res.statusCode! >= 200 && res.statusCode! < 300) resolve();
          else reject(new Error(`${method} ${path.replace(/\/l[uac]\d+/g, '/:id')}: ${res.statusCode} ${text.slice(0, 120)}`));
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} timed out`)));
    req.on('error', reject);
    req.end(data);
  });
}

/** Runs `fn` over `items` with `concurrency` calls in flight; failures are counted, never thrown. */
async function inFlight<T>(items: T[], concurrency: number, fn: (x: T, i: number) => Promise<void>, errors: Record<string, number>): Promise<number> {
  let next = 0;
  let ok = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        try {
          await fn(items[i]!, i);
          ok++;
        } catch (err) {
          countError(errors, err);
        }
      }
    }),
  );
  return ok;
}

/**
 * Creates the plan's advisors, users (with a balance for far longer than the run), top-ups
 * and chats over HTTP, then starts every chat and times it. With several nodes the
 * requests go round-robin over them, as through a balancer.
 */
export async function setUpOverHttp(urls: string[], apiKey: string, plan: LoadPlan, cfg: LoadConfig): Promise<SetupResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: Math.max(32, cfg.startConcurrency) });
  const base = (i: number) => urls[i % urls.length]!;
  const errors: Record<string, number> = {};
  const stepMs: Record<string, number> = {};
  const step = async <T>(name: string, items: T[], fn: (x: T, i: number) => Promise<void>) => {
    const t0 = performance.now();
    await inFlight(items, 32, fn, errors);
    stepMs[name] = Math.round(performance.now() - t0);
  };
  try {
    // 1 credit a minute and the default free time: 100 credits pay for 100 minutes, far beyond any run
    await step('advisors', plan.advisors, (a, i) => call(agent, base(i), apiKey, 'PUT', `/v1/advisors/${a.id}`, { name: `Advisor ${a.id}`, ratePerMinute: '1' }, cfg.ackTimeoutMs));
    await step('users', plan.chats, (c, i) => call(agent, base(i), apiKey, 'PUT', `/v1/users/${c.userId}`, { name: `User ${c.userId}`, balance: '10' }, cfg.ackTimeoutMs));
    await step('topups', plan.chats, (c, i) =>
      call(agent, base(i), apiKey, 'POST', `/v1/users/${c.userId}/credits`, { amount: '100', idempotencyKey: `load-topup-${c.userId}` }, cfg.ackTimeoutMs),
    );
    await step('chats', plan.chats, (c, i) => call(agent, base(i), apiKey, 'POST', '/v1/chats', { id: c.id, userId: c.userId, advisorId: c.advisorId }, cfg.ackTimeoutMs));

    const latency: number[] = [];
    const startErrors: Record<string, number> = {};
    const t0 = performance.now();
    const ok = await inFlight(
      plan.chats,
      cfg.startConcurrency,
      async (c, i) => {
        const t = performance.now();
        await call(agent, base(i), apiKey, 'POST', `/v1/chats/${c.id}/start`, undefined, cfg.ackTimeoutMs);
        latency.push(performance.now() - t);
      },
      startErrors,
    );
    const ms = performance.now() - t0;
    stepMs.start = Math.round(ms);
    return {
      stepMs,
      start: {
        requests: plan.chats.length,
        ok,
        perSecond: round((ok * 1000) / ms, 0),
        concurrency: cfg.startConcurrency,
        latencyMs: dist(latency),
        errors: startErrors,
      },
      errors,
    };
  } finally {
    agent.destroy();
  }
}
