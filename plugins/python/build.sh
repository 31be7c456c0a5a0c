#!/usr/bin/env bash
# Builds a Python stage into a WebAssembly component with componentize-py (pinned in
# requirements.txt), installed into the project's virtualenv the first time it is missing.
# Usage: plugins/python/build.sh                     enrich → plugins/dist/enrich-python.wasm
#        plugins/python/build.sh APP_DIR OUT.wasm    any stage whose module is APP_DIR/app.py
#        plugins/python/build.sh --test              runs the stages' unit tests natively instead
# `--test` also writes the bindings componentize-py generates for the world to
# plugins/python/bindings/ (not committed), for the tests, editors and type checkers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
wit=$here/../../wit
venv=${WEIR_VENV:-$HOME/.cache/weir/venv}

version=$(sed -n 's/^componentize-py==\([^ ]*\).*/\1/p' "$here/requirements.txt")
if [ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $version" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

if [ "${1:-}" = --test ]; then
  rm -rf "$here/bindings"
  "$venv/bin/componentize-py" -q -d "$wit" -w stage bindings "$here/bindings"
  # One process per folder: each stage's module is called `app`.
  for dir in "$here/enrich" "$here/template"; do
    PYTHONPATH="$here/bindings" "$venv/bin/python" -m unittest discover -s "$dir" -p 'test_*.py'
  done
  exit
fi

app_dir=${1:-$here/enrich}
out=${2:-$here/../dist/enrich-python.wasm}
mkdir -p "$(dirname "$out")"
"$venv/bin/componentize-py" -q -d "$wit" -w stage componentize app \
  -p "$app_dir" -p "$here/sdk" -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
