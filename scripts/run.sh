#!/usr/bin/env bash
# Builds Kiln (release) and starts one node on 127.0.0.1:7070 with its data in
# ./kiln-data. Extra arguments go to kiln-node (see `kiln-node --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
install_missing_packages clang libclang-dev
ensure_build_space
build_ui
cargo build --release -p kiln-node -p kiln-client
echo "kiln-node starting; query it with $CARGO_TARGET_DIR/release/kiln (see README.md)" >&2
exec "$CARGO_TARGET_DIR/release/kiln-node" --data-dir "${KILN_DATA_DIR:-./kiln-data}" "$@"
