import { expect } from 'chai';
import { batchedReads } from '../server/batched-reads.js';

describe('batched reads', () => {
  it('reads every id asked for in one turn of the event loop with one call, and each turn again', async () => {
    const calls: string[][] = [];
    const rows = batchedReads(async (ids) => {
      calls.push(ids);
      return new Map(ids.filter((id) => id !== 'gone').map((id) => [id, `row ${id}`]));
    });
    // asked from separate callbacks of one poll phase, as socket messages are
    const asked = await new Promise<Array<Promise<string | null>>>((resolve) => {
      const out: Array<Promise<string | null>> = [];
      let left = 4;
      for (const id of ['a', 'b', 'gone', 'a']) {
        setImmediate(() => {
          out.push(rows.load(id));
          if (--left === 0) resolve(out);
        });
      }
    });
    expect(await Promise.all(asked)).to.deep.equal(['row a', 'row b', null, 'row a']);
    expect(calls).to.deep.equal([['a', 'b', 'gone']]);
    // nothing is cached: a later load reads again
    expect(await rows.load('a')).to.equal('row a');
    expect(calls).to.have.length(2);
  });

  it('fails every load of a batch whose read fails, and the next batch reads again', async () => {
    let fail = true;
    const rows = batchedReads(async (ids) => {
      if (fail) throw new Error('database down');
      return new Map(ids.map((id) => [id, id]));
    });
    const results = await Promise.allSettled([rows.load('a'), rows.load('b')]);
    expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected']);
    fail = false;
    expect(await rows.load('a')).to.equal('a');
  });
});
