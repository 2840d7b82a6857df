import { Writable } from 'node:stream';
import { expect } from 'chai';
import { pino } from 'pino';
import { QueryFailedError } from 'typeorm';
import { serializeError } from '../server/log.js';

describe('logs', () => {
  it('keep a failed query\'s text and code but none of its values (parameters, detail, where)', () => {
    const driverError = Object.assign(new Error('duplicate key value violates unique constraint "users_pkey"'), {
      code: '23505',
      detail: 'Key (id)=(alice@example.com) already exists.',
      where: "unnamed portal parameter $2 = 'order-secret-key'",
      parameters: ['alice@example.com', 'order-secret-key'],
    });
    const err = new QueryFailedError('INSERT INTO users (id, name) VALUES ($1, $2)', ['alice@example.com', 'order-secret-key'], driverError);
    let line = '';
    const log = pino({ serializers: { err: serializeError } }, new Writable({ write: (chunk, _enc, cb) => ((line += chunk), cb()) }));
    log.error({ err }, 'request failed');
    expect(line).to.include('INSERT INTO users').and.include('23505');
    expect(line).to.not.include('alice@example.com');
    expect(line).to.not.include('order-secret-key');
  });
});
