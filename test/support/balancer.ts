import { type Server, type Socket, connect, createServer } from 'node:net';

/**
 * A TCP load balancer on loopback, as an integrator would put in front of a
 * cluster: each connection goes to the next backend in turn (no stickiness), and a
 * backend that refuses the connection is skipped, so clients of a dead node
 * reconnect to the others.
 */
export interface Balancer {
  url: string;
  /** The backends' ports, in turn; replace them to add or remove a node. */
  backends: number[];
  close(): Promise<void>;
}

/** Starts a balancer over these ports on an ephemeral port of 127.0.0.1. */
export async function startBalancer(backends: number[]): Promise<Balancer> {
  let next = 0;
  const open = new Set<Socket>();
  const balancer: Balancer = { url: '', backends: [...backends], close: async () => {} };
  const server: Server = createServer((client) => {
    open.add(client);
    client.on('close', () => open.delete(client));
    client.on('error', () => client.destroy());
    client.pause();
    const tryBackend = (attempt: number) => {
      if (attempt >= balancer.backends.length) return client.destroy();
      const port = balancer.backends[next++ % balancer.backends.length]!;
      const upstream = connect(port, '127.0.0.1');
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        open.add(upstream);
        upstream.on('close', () => {
          open.delete(upstream);
          client.destroy();
        });
        client.on('close', () => upstream.destroy());
        upstream.on('error', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
      upstream.once('error', () => {
        if (!connected) tryBackend(attempt + 1);
      });
    };
    tryBackend(0);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  balancer.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  balancer.close = async () => {
    for (const s of open) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return balancer;
}
