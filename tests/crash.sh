#!/usr/bin/env bash
# The crash test at length: `tests/crash.sh [KILLS] [SEED]` runs the same test as CI
# (tests/lakehouse.rs, sigkill_at_any_moment_loses_and_repeats_nothing) with KILLS SIGKILLs
# (default 1000) and prints each kill and the final figures. Needs what `make test` sets up.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export WEIR_CRASH_KILLS="${1:-1000}"
export WEIR_CRASH_SEED="${2:-20261121}"
bash tests/services.sh install
plugins/build.sh >/dev/null
started=$(date +%s)
cargo test --release -p weir --test lakehouse -- --exact sigkill_at_any_moment_loses_and_repeats_nothing --nocapture
echo "crash test: $WEIR_CRASH_KILLS kills, seed $WEIR_CRASH_SEED, passed in $(( $(date +%s) - started ))s"
