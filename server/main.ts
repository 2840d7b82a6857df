/** Starts one node: config → createApp → listen; SIGTERM/SIGINT shut it down in order. */
import { createApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`chatmeter: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const app = await createApp(config);
  const port = await app.listen(config.port);
  const base = `http://localhost:${port}`;
  app.log.info(
    {
      url: base,
      database: config.databaseUrl ? 'postgres' : `pglite:${config.dataDir}`,
      redis: Boolean(config.redisUrl),
      ...(config.generatedSecrets.apiKey ? { apiKey: config.apiKey } : {}),
      ...(config.generatedSecrets.jwtSecret ? { jwtSecret: config.jwtSecret } : {}),
    },
    config.generatedSecrets.apiKey || config.generatedSecrets.jwtSecret
      ? 'chatmeter is up; set CHATMETER_API_KEY and CHATMETER_JWT_SECRET to keep these across restarts'
      : 'chatmeter is up',
  );
  if (config.generatedSecrets.apiKey) process.stdout.write(`\n  API key (this run only): ${config.apiKey}\n  ${base}/healthz\n\n`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal }, 'signal received');
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
