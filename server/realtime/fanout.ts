/**
 * Fan-out of settlement pushes to every node's sockets.
 *
 * One node emits to its own rooms. With many nodes, socket.io's Redis adapter would
 * publish each emit on its own: at 2,000 chats that is 2,000 publishes a second,
 * each one a Redis command (with its timeout timer), a msgpack encoding, and a
 * message every node, the sender included, reads and decodes before the sender
 * drops its own. The Redis fan-out emits locally and publishes the whole batch of a
 * settlement (up to a tick slot's 500 chats) as one JSON message; a node recognizes
 * its own messages by their first bytes, without decoding them.
 *
 * Delivery is the adapter's: at most once, in order from one node; a batch
 * published while Redis is down is dropped, as the adapter's packets are.
 */
import type { RedisClientType } from 'redis';
import type { ServerToClientEvents } from '../../client-sdk/src/protocol.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { ChatServer } from './socket-server.js';

/** One push: an event of the protocol, with its payload, to the sockets in any of these rooms. */
export type Push = {
  [E in keyof ServerToClientEvents]: { rooms: string[]; event: E; data: Parameters<ServerToClientEvents[E]>[0] };
}[keyof ServerToClientEvents];

/** Delivers a batch of pushes to the sockets of every node. */
export interface Fanout {
  send(pushes: Push[]): void;
}

/** Where a fan-out reports a push that failed (one push's failure never stops the others). */
export interface FanoutDeps {
  log: Logger;
  metrics: Metrics;
}

/** Emits to this node's sockets only (never through an adapter). */
function emitAll(io: ChatServer, pushes: readonly Push[], d: FanoutDeps): void {
  const local = io.local;
  for (const p of pushes) {
    try {
      (local.to(p.rooms).emit as (event: string, data: unknown) => boolean)(p.event, p.data);
    } catch (err) {
      d.metrics.backgroundErrors.inc({ where: 'publish' });
      d.log.error({ err, event: p.event, rooms: p.rooms }, 'push failed');
    }
  }
}

/** The fan-out of one node: its sockets are all there is. */
export function localFanout(io: ChatServer, d: FanoutDeps): Fanout {
  return { send: (pushes) => emitAll(io, pushes, d) };
}

export interface RedisFanoutOptions extends FanoutDeps {
  pub: RedisClientType;
  sub: RedisClientType;
  /** The channel, shared by the cluster's nodes (and no one else). */
  channel: string;
  /** This node's id: the prefix of its messages. */
  nodeId: string;
}

/**
 * The fan-out of many nodes: local sockets get each push at once, the other nodes
 * one message a batch. Resolves once subscribed (node-redis subscribes again
 * after a reconnect by itself).
 */
export async function redisFanout(io: ChatServer, o: RedisFanoutOptions): Promise<Fanout> {
  // the node id can't contain '\n' (it is a hostname, a pid and hex), so the first line is the sender
  const head = `${o.nodeId}\n`;
  const ownPrefix = Buffer.from(head);
  const listener = (message: Buffer): void => {
    if (ownPrefix.equals(message.subarray(0, ownPrefix.length))) return;
    let pushes: Push[];
    try {
      const start = message.indexOf(0x0a);
      pushes = JSON.parse(message.toString('utf8', start + 1)) as Push[];
      if (!Array.isArray(pushes)) throw new TypeError('not a list of pushes');
    } catch (err) {
      o.metrics.backgroundErrors.inc({ where: 'fanout' });
      o.log.error({ err, channel: o.channel, bytes: message.length }, 'a fan-out message could not be read; dropped');
      return;
    }
    emitAll(io, pushes, o);
  };
  await o.sub.subscribe(o.channel, listener, true);
  return {
    send(pushes) {
      if (pushes.length === 0) return;
      emitAll(io, pushes, o);
      // a failed publish is counted and logged by the client's wrapper (app.ts), never thrown here
      void o.pub.publish(o.channel, head + JSON.stringify(pushes));
    },
  };
}
