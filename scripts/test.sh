#!/usr/bin/env bash
# Installs what the tests need and runs the whole test suite: formatting, lints,
# unit, property and end-to-end tests (real nodes, real RocksDB, go tool pprof).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
# clang/libclang: RocksDB bindings; golang-go: `go tool pprof` as the reference.
# libbpf-dev, linux-libc-dev: headers of kiln-agent's BPF program (compiled with clang by agent/build.rs).
install_missing_packages clang libclang-dev golang-go libbpf-dev linux-libc-dev
# python3 (a stock interpreter under load) and binutils (objdump) for the agent's DWARF unwinding test.
install_missing_packages python3 binutils
# chromium: the web UI's end-to-end test drives Debian's headless chromium (ui/e2e).
install_missing_packages chromium
if [ ! -d ../shared/testdata ]; then
    echo "error: ../shared/testdata is missing; the tests read the shared profiles beside the clone" >&2
    exit 1
fi
# Incremental state helps an edit-compile loop, not a test run of a fresh clone, and it is the
# largest part of the cache that each clone path adds.
export CARGO_INCREMENTAL=0
ensure_build_space
# The web UI first: kiln-node embeds ui/dist; its unit tests (vitest) are quick.
build_ui
(cd ui && npm test)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The web UI end to end: the debug kiln-node and kiln just built, headless chromium, the shared profiles.
(cd ui && npm run e2e)
