// Turns a JavaScript stage module into a WebAssembly component of the `weir:plugin/stage` world.
// Usage: node plugins/js/componentize.mjs SOURCE.js OUT.wasm [ROOT]
//
// It calls ComponentizeJS directly rather than through `jco componentize`, which needs the
// network. Ahead-of-time compilation (weval) stays off: it downloads a helper binary at run
// time. Every WASI feature of the engine is turned off, so the component imports nothing the
// host does not give a stage (no clocks, no randomness, no HTTP, no stdio).
import { writeFile, rename } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, relative, resolve, sep } from 'node:path';
import { componentize } from '@bytecodealliance/componentize-js';

const invokedFrom = process.cwd();
const [source, out, root] = process.argv.slice(2);
if (!source || !out) {
  console.error('usage: node componentize.mjs SOURCE.js OUT.wasm [ROOT]');
  process.exit(2);
}

// While it loads the module, the engine sees only one folder (ROOT): every file the module
// imports must be inside it. By default it is the deepest folder that holds both the module and
// this SDK, so that a stage anywhere in the repository can import `sdk/weir.js` by a relative
// path, wherever the script is run from.
const sourcePath = resolve(source);
const sdk = fileURLToPath(new URL('sdk', import.meta.url));
let workspace = dirname(sourcePath);
while (relative(workspace, sdk).split(sep)[0] === '..') workspace = dirname(workspace);
if (root !== undefined) {
  workspace = resolve(root);
} else if (workspace === dirname(workspace)) {
  // ComponentizeJS cannot start the engine in the file system's root.
  console.error(`${source} is outside the repository: name a folder holding it and its imports`);
  process.exit(2);
}
process.chdir(workspace);

const { component } = await componentize({
  sourcePath,
  witPath: fileURLToPath(new URL('../../wit', import.meta.url)),
  worldName: 'stage',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
const target = resolve(invokedFrom, out);
await writeFile(`${target}.tmp`, component);
await rename(`${target}.tmp`, target);
