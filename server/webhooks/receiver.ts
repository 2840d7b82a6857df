/**
 * A small webhook receiver built into the node, for `npm start` on the embedded database: a
 * newcomer sees every event in the log without writing a receiver. It does what the README
 * tells integrators to do: verify the signature over the raw body, then deduplicate by id.
 */
import express, { type Router } from 'express';
import type { Logger } from '../log.js';
import { SIGNATURE_HEADER, verify } from './signature.js';

export const RECEIVER_PATH = '/demo/webhooks';

export function builtInReceiver(secret: string, log: Logger): Router {
  const r = express.Router();
  const seen = new Set<string>();
  r.post(RECEIVER_PATH, express.text({ type: 'application/json', limit: '64kb' }), (req, res) => {
    const body = typeof req.body === 'string' ? req.body : '';
    if (!verify(secret, body, req.get(SIGNATURE_HEADER), Date.now())) {
      log.warn({ receiver: RECEIVER_PATH }, 'webhook refused: bad signature');
      return void res.status(400).json({ error: 'bad signature' });
    }
    const event = JSON.parse(body) as { id: string; type: string; data: unknown };
    if (!seen.has(event.id)) {
      seen.add(event.id);
      log.info({ receiver: RECEIVER_PATH, eventId: event.id, type: event.type, data: event.data }, 'webhook received');
    }
    res.status(204).end();
  });
  return r;
}
