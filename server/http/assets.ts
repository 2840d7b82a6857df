import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import express, { type Request, type Response, Router } from 'express';
import { ErrorCode } from '../../client-sdk/src/protocol.js';

/** `client-sdk/`, from the sources (tsx) or from the built `dist/server` alike. */
const SDK_DIR =
  ['../../client-sdk', '../../../client-sdk'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find((dir) => existsSync(`${dir}/package.json`)) ??
  fileURLToPath(new URL('../../client-sdk', import.meta.url));

/** The demo pages at `/demo/`, and the SDK's browser bundle at `/sdk/chatmeter.js`. */
export function assetsRouter(): Router {
  const router = Router();
  router.use('/demo', express.static(`${SDK_DIR}/demo`, { index: false }));
  router.get('/sdk/chatmeter.js', serveSdk);
  return router;
}

/**
 * The SDK as one browser ES module, built by `npm install` (prepare) or `npm run build:sdk`.
 * Public code: any origin may load it (module scripts are fetched with CORS), and browsers
 * revalidate it, so a deploy reaches them.
 */
function serveSdk(_req: Request, res: Response): void {
  res.set({ 'Access-Control-Allow-Origin': '*', 'Cross-Origin-Resource-Policy': 'cross-origin', 'Cache-Control': 'no-cache' });
  res.type('text/javascript');
  res.sendFile(`${SDK_DIR}/dist/chatmeter.js`, (err) => {
    if (err && !res.headersSent) {
      res.status(404).json({ error: { code: ErrorCode.NotFound, message: 'the client SDK is not built: run npm run build:sdk' } });
    }
  });
}
