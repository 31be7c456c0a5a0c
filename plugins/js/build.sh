#!/usr/bin/env bash
# Builds a JavaScript stage into a WebAssembly component with ComponentizeJS (pinned in
# package-lock.json). Needs Node.js 20 or later and the npm registry the first time.
# Usage: plugins/js/build.sh                            enrich → plugins/dist/enrich-js.wasm
#        plugins/js/build.sh SOURCE.js OUT.wasm [ROOT]  any stage module; ROOT is the folder
#            holding it and all it imports (default: the deepest one that also holds sdk/)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source=${1:-$here/enrich/enrich.js}
out=${2:-$here/../dist/enrich-js.wasm}
command -v node >/dev/null || { echo "Node.js 20 or later is needed to build JavaScript stages" >&2; exit 1; }

# Install the pinned packages only when node_modules is missing or was installed from another
# lock file: a warm build costs no registry round trip.
stamp=$here/node_modules/.weir-package-lock.json
if ! cmp -s "$here/package-lock.json" "$stamp"; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$here/package-lock.json" "$stamp"
fi

mkdir -p "$(dirname "$out")"
node "$here/componentize.mjs" "$source" "$out" ${3:+"$3"}
echo "built $out"
