#!/usr/bin/env bash
# Installs what the tests need and runs the whole test suite: formatting, lints,
# unit, property and end-to-end tests (real nodes, real RocksDB, go tool pprof).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
# clang/libclang: RocksDB bindings; golang-go: `go tool pprof` as the reference.
# libbpf-dev, linux-libc-dev: headers of kiln-agent's BPF program (compiled with clang by agent/build.rs).
install_missing_packages clang libclang-dev golang-go libbpf-dev linux-libc-dev
if [ ! -d ../shared/testdata ]; then
    echo "error: ../shared/testdata is missing; the tests read the shared profiles beside the clone" >&2
    exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
