#!/usr/bin/env bash
# Builds every guest plugin — Rust, C, JavaScript and Python — into components in plugins/dist/.
# Usage: plugins/build.sh           every language (each one's build installs its toolchain)
#        plugins/build.sh rust      the Rust plugins only (all the quick start needs)
# CARGO_TARGET_DIR is honoured.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
cargo build --manifest-path "$here/Cargo.toml" --release --target wasm32-wasip2 --workspace \
  --exclude weir-test-ohlc-v2
mkdir -p "$here/dist"
for crate in weir_enrich weir_ohlc weir_sessionize weir_cdc weir_test_chaos weir_test_window_count weir_test_wrong_world; do
  name=${crate#weir_}
  name=${name//_/-}
  cp "$target_dir/wasm32-wasip2/release/$crate.wasm" "$here/dist/$name.wasm.tmp"
  mv "$here/dist/$name.wasm.tmp" "$here/dist/$name.wasm"
done
# ohlc's next version wraps ohlc without its exports: built on its own (a workspace build would
# unify ohlc's features and export both), into a folder of its own (so that ohlc built as its
# dependency never replaces the ohlc.wasm above).
CARGO_TARGET_DIR=$target_dir/ohlc-v2 cargo build --manifest-path "$here/Cargo.toml" --release \
  --target wasm32-wasip2 -p weir-test-ohlc-v2
cp "$target_dir/ohlc-v2/wasm32-wasip2/release/weir_test_ohlc_v2.wasm" "$here/dist/ohlc-v2.wasm.tmp"
mv "$here/dist/ohlc-v2.wasm.tmp" "$here/dist/ohlc-v2.wasm"
if [[ ${1:-all} == rust ]]; then
  ls -l "$here/dist"
  exit
fi

# JavaScript (needs Node.js 20) and Python (a virtualenv) plugins: each language's own build
# script writes its components to dist/.
"$here/js/build.sh"
"$here/python/build.sh"

# C plugins (clang-19 and wasi-libc, installed with apt-get when missing): dist/NAME-c.wasm.
"$here/c/build.sh"

ls -l "$here/dist"
