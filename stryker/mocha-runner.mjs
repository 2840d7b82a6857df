// Stryker's mocha runner, made to load Mocha 12. The runner (9.6.1, the last Stryker for Node 20;
// Stryker 10 wants Node 22) requires `mocha/lib/cli/run-helpers` and `.../options` without an
// extension, and Mocha 12 ships them as `.cjs`: let require() try `.cjs` too, then load the runner.
import Module from 'node:module';

Module._extensions['.cjs'] ??= Module._extensions['.js'];
const runner = await import('@stryker-mutator/mocha-runner');
export const { strykerPlugins, strykerValidationSchema } = runner;
