/** Starts one node: config → createApp → listen; SIGTERM/SIGINT shut it down in order. */
import { randomBytes } from 'node:crypto';
import { createApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { loadDemo } from './demo.js';
import { RECEIVER_PATH } from './webhooks/receiver.js';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env, { node: true });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`chatmeter: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (!config.databaseUrl && !config.webhook && config.port !== 0) {
    // a fresh machine: events go to a receiver inside this node, which logs them (SPEC 8)
    config = {
      ...config,
      webhook: {
        url: `http://127.0.0.1:${config.port}${RECEIVER_PATH}`,
        secret: randomBytes(24).toString('base64url'),
        timeoutMs: 10_000,
        retryBaseMs: 5000,
        builtInReceiver: true,
      },
    };
  }
  const app = await createApp(config, {
    onLostSingleNode: () => app.close({ exit: true }).catch(() => process.exit(1)),
  });
  const port = await app.listen(config.port);
  const base = `http://localhost:${port}`;
  // secrets never go to the logs; a generated API key (embedded database only) is shown once on the terminal below
  app.log.info(
    { url: base, database: config.databaseUrl ? 'postgres' : `pglite:${config.dataDir}`, redis: Boolean(config.redisUrl) },
    'chatmeter is up',
  );
  const banner = [`chatmeter on ${base}`];
  if (config.generatedSecrets.apiKey) banner.push(`API key (this run only; set CHATMETER_API_KEY to keep one): ${config.apiKey}`);
  if (!config.databaseUrl) {
    // a fresh machine: demo rows and pages to watch a meter run (never loaded into a real Postgres)
    const demo = await loadDemo(app, base, Date.now());
    app.log.info({ chatId: demo.chatId, userId: 'demo-user', advisorId: 'demo-advisor' }, 'demo data loaded');
    banner.push('Demo (open both; the advisor starts the chat):', `  user tab:          ${demo.userPage}`, `  advisor dashboard: ${demo.advisorPage}`);
    if (config.webhook?.builtInReceiver) banner.push(`Webhooks go to the built-in receiver at ${RECEIVER_PATH} (logged as "webhook received"); set WEBHOOK_URL for yours`);
  }
  process.stdout.write(`\n${banner.map((l) => `  ${l}`).join('\n')}\n\n`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal }, 'signal received');
    // a database or Redis that stopped answering must not hold the exit forever
    setTimeout(() => {
      app.log.error({ signal }, 'shutdown took over 30 s; exiting');
      process.exit(1);
    }, 30_000).unref();
    app.close({ exit: true }).catch((err: unknown) => {
      app.log.error({ err }, 'shutdown failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('unhandledRejection', (err) => app.log.error({ err }, 'unhandled rejection'));
}

main().catch((err: unknown) => {
  process.stderr.write(`chatmeter: failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
