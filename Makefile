# Weir's entry points. The README's two commands are `make quickstart` and `make test`.
#
# Build artifacts live outside the clone (CARGO_TARGET_DIR, default ~/.cache/weir/target) so
# that a fresh clone, and CI, reuse one build cache.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
VENV ?= $(HOME)/.cache/weir/venv
export WEIR_PYTHON ?= $(VENV)/bin/python
WEIR := $(CARGO_TARGET_DIR)/release/weir
# The plugins' workspace built natively (clippy, unit tests) gets a folder of its own: its crates
# that are also cdylibs have file names without a hash, so sharing the host's folder would let
# one workspace's libweir_enrich.rlib replace the other's.
PLUGINS_NATIVE := $(CARGO_TARGET_DIR)/plugins-native

.PHONY: quickstart test toolchain plugins rust-plugins build readers lint unit bench clean-data

## Sets up what is missing, builds, and runs pipelines/quickstart-kafka.yaml on embedded defaults
## (an in-process Kafka cluster, an Iceberg table in a SQLite catalog and a local warehouse).
quickstart: rust-plugins build
	$(WEIR) run pipelines/quickstart-kafka.yaml
	@echo "Read the Iceberg table with any Iceberg reader, for instance DuckDB's iceberg extension:"
	@echo "  SET unsafe_enable_version_guessing = true;"
	@echo "  SELECT symbol, count(*), avg(price) FROM iceberg_scan('data/quickstart-kafka/warehouse/quickstart/trades') GROUP BY 1"

## Sets up what is missing and runs every check: format, lints, unit and integration tests.
test: plugins readers lint unit
	@if cargo nextest --version >/dev/null 2>&1; then \
	  cargo nextest run --release --workspace --no-fail-fast; \
	else \
	  cargo test --release --workspace --no-fail-fast; \
	fi

## The WebAssembly target (rust-toolchain.toml names it too; this also covers an older rustup).
toolchain:
	@command -v cargo >/dev/null || { echo "Rust is needed: https://rustup.rs"; exit 1; }
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## Builds every guest plugin (Rust, C, JavaScript, Python) into plugins/dist/, installing the
## C, JavaScript and Python toolchains when they are missing.
plugins: toolchain
	plugins/build.sh

## Builds the Rust plugins only: all the quick start needs.
rust-plugins: toolchain
	plugins/build.sh rust

## Builds the host.
build:
	cargo build --release

## The test services (the tansu broker, SeaweedFS) and the independent readers (pyarrow, DuckDB,
## confluent-kafka, Prometheus' parser, schemathesis), installed once into $(VENV); Chromium
## and playwright-core for the browser test of the web page.
readers:
	@WEIR_VENV=$(VENV) tests/services.sh install
	@tests/ui/install.sh

## Formatting and clippy, for the host and the plugins, warnings as errors.
lint:
	cargo fmt --all --check
	cd plugins && cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	cd plugins && CARGO_TARGET_DIR=$(PLUGINS_NATIVE) cargo clippy --release --workspace --all-targets -- -D warnings
	plugins/c/build.sh --check

## The plugins' own logic, natively, in each language's test runner.
unit:
	cd plugins && CARGO_TARGET_DIR=$(PLUGINS_NATIVE) cargo test --release --workspace
	node --test plugins/js/
	plugins/python/build.sh --test

## The enrich benchmark: WebAssembly against the same logic compiled natively.
bench: plugins
	cargo bench --bench enrich

clean-data:
	rm -rf data
