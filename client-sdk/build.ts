/**
 * Builds @chatmeter/client into dist/: an ES module and a CommonJS file for Node and bundlers
 * (socket.io-client stays a dependency), one minified browser ES module with socket.io-client
 * inside (served by every node at GET /sdk/chatmeter.js), and the type declarations.
 * Runs at the root's `npm install` (prepare) and as `npm run build:sdk`.
 */
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build, type BuildOptions } from 'esbuild';

const here = fileURLToPath(new URL('.', import.meta.url));
const dist = `${here}dist`;
const common: BuildOptions = {
  entryPoints: [`${here}src/index.ts`],
  bundle: true,
  target: 'es2022',
  logLevel: 'warning',
  legalComments: 'none',
};

rmSync(dist, { recursive: true, force: true });
await Promise.all([
  build({ ...common, platform: 'neutral', format: 'esm', packages: 'external', outfile: `${dist}/index.js` }),
  build({ ...common, platform: 'node', format: 'cjs', packages: 'external', outfile: `${dist}/index.cjs` }),
  build({ ...common, platform: 'browser', format: 'esm', minify: true, outfile: `${dist}/chatmeter.js` }),
]);
// declarations from the compiler itself: the one protocol module's types go out as written
const tsc = fileURLToPath(new URL('bin/tsc', import.meta.resolve('typescript/package.json')));
execFileSync(process.execPath, [tsc, '-p', `${here}tsconfig.json`], { stdio: 'inherit' });
