#!/usr/bin/env bash
# Builds the C plugins: each folder plugins/c/NAME/ other than sdk/ and tool/ becomes
# plugins/dist/NAME-c.wasm, a component of the `stage` world of wit/weir.wit.
#
# Usage: plugins/c/build.sh           build (installs clang-19 and wasi-libc with apt if missing)
#        plugins/c/build.sh --check   also fail if sdk/gen/ is not what wit/ generates now
#        plugins/c/build.sh --regen   regenerate sdk/gen/ from wit/, then build
#
# clang compiles C to wasm32 objects against wasi-libc. `wasm-component-ld`, which ships with
# every Rust toolchain (the wasm32-wasip2 target links with it), links them with Rust's own
# wasm-ld and makes the component, its type read straight from wit/weir.wit. The C bindings in
# sdk/gen/ are checked in, so a build needs neither wasm-tools nor wit-bindgen-cli; --check and
# --regen build the small generator in tool/ (wit-bindgen-c, same release as the Rust plugins'
# wit-bindgen). A plain build still refuses bindings older than the WIT, by the hash in
# sdk/gen/wit.sha256.
#
# WASM_CC (default clang-19) and WASI_LIBC (default /usr/lib/wasm32-wasi, Debian's wasi-libc)
# point at another toolchain, such as wasi-sdk's.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
wit=$(cd "$here/../../wit" && pwd)
gen=$here/sdk/gen
dist=$here/../dist
cc=${WASM_CC:-clang-19}
wasi_libc=${WASI_LIBC:-/usr/lib/wasm32-wasi}
mode=${1:-build}
case $mode in
  build | --check | --regen) ;;
  *) echo "usage: $0 [--check | --regen]" >&2; exit 2 ;;
esac

# One hash over every .wit file, in name order.
wit_hash() { cat "$wit"/*.wit | sha256sum | cut -d' ' -f1; }

# Generates the bindings of the `stage` world into $1.
generate() {
  cargo run --quiet --locked --manifest-path "$here/tool/Cargo.toml" -- "$wit" "$1"
  wit_hash > "$1/wit.sha256"
}

# --- Tools: install what is missing, only then. ---
missing=()
command -v "$cc" > /dev/null || missing+=(clang-19)
[[ -f $wasi_libc/libc.a ]] || missing+=(wasi-libc)
if ((${#missing[@]})); then
  echo "plugins/c: installing ${missing[*]} with apt-get" >&2
  sudo=$([[ $(id -u) == 0 ]] || echo sudo)
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
rust_bin=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin
linker=$rust_bin/wasm-component-ld
if [[ ! -x $linker || ! -x $rust_bin/gcc-ld/wasm-ld ]]; then
  echo "plugins/c: $linker or gcc-ld/wasm-ld beside it is missing;" \
    "both ship with rustc (the toolchain of rust-toolchain.toml has them)" >&2
  exit 1
fi

# --- Bindings ---
case $mode in
  --regen) generate "$gen" ;;
  --check)
    fresh=$(mktemp -d)
    trap 'rm -rf "$fresh"' EXIT
    generate "$fresh"
    if ! diff -r "$gen" "$fresh" > /dev/null; then
      diff -ru "$gen" "$fresh" | head -40 >&2 || true
      echo "plugins/c: sdk/gen/ is stale; run plugins/c/build.sh --regen and commit it" >&2
      exit 1
    fi
    ;;
esac
if [[ $(wit_hash) != $(cat "$gen/wit.sha256") ]]; then
  echo "plugins/c: sdk/gen/ was generated from another wit/;" \
    "run plugins/c/build.sh --regen and commit it" >&2
  exit 1
fi

# --- Plugins ---
cflags=(--target=wasm32-wasi -std=gnu11 -O2 -mbulk-memory
  -Wall -Wextra -Wno-unused-parameter -Werror -I"$here/sdk")
objects=$(mktemp -d)
trap 'rm -rf "$objects" ${fresh:+"$fresh"}' EXIT
for file in "$here"/sdk/weir.c "$gen"/stage.c; do
  "$cc" "${cflags[@]}" -c "$file" -o "$objects/sdk-$(basename "$file" .c).o"
done
mkdir -p "$dist"
for dir in "$here"/*/; do
  name=$(basename "$dir")
  [[ $name == sdk || $name == tool ]] && continue
  compgen -G "$dir*.c" > /dev/null || continue
  mkdir -p "$objects/$name"
  for file in "$dir"*.c; do
    "$cc" "${cflags[@]}" -I"$dir" -c "$file" -o "$objects/$name/$(basename "$file" .c).o"
  done
  # A stage's own weir_on_watermark replaces the SDK's weak default. crt1-reactor.o gives
  # `_initialize` (C constructors), which the component runs once before any export.
  "$linker" --wasm-ld-path "$rust_bin/gcc-ld/wasm-ld" --component-type "$wit/weir.wit" \
    --entry=_initialize --strip-debug -z stack-size=1048576 \
    -o "$dist/$name-c.wasm.tmp" "$wasi_libc/crt1-reactor.o" "$objects"/sdk-*.o \
    "$objects/$name"/*.o -L"$wasi_libc" -lc
  mv "$dist/$name-c.wasm.tmp" "$dist/$name-c.wasm"
  echo "plugins/c: $(cd "$dist" && pwd)/$name-c.wasm ($(wc -c < "$dist/$name-c.wasm") bytes)"
done
