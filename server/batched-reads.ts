/**
 * Reads that many sockets ask for at once (a connect storm's joins), gathered into one
 * statement per turn of the event loop. On this class of machine a statement costs
 * about 100-250 us of node CPU whatever it carries (the write to Postgres's socket),
 * so 500 joins a second as 500 single-row reads cost more than the joins themselves.
 * DataLoader gathers the keys; `setImmediate` lets it take every key asked for by the
 * socket messages of one poll phase, not only those of one callback. Nothing is
 * cached: each load reads the database after it was asked for.
 */
import DataLoader from 'dataloader';

/** A loader of rows by id, one statement for all the ids asked for in one turn. */
export function batchedReads<V>(read: (ids: string[]) => Promise<Map<string, V>>): DataLoader<string, V | null> {
  return new DataLoader<string, V | null>(
    async (ids) => {
      const found = await read([...new Set(ids)]);
      return ids.map((id) => found.get(id) ?? null);
    },
    { cache: false, batchScheduleFn: (run) => setImmediate(run), maxBatchSize: 500 },
  );
}
