#!/usr/bin/env bash
# Starts a local 3-node Kiln cluster on loopback: three kiln-node processes, three
# data directories, replication factor 3. Ctrl-C (or SIGTERM) stops all three.
#
#   ./scripts/cluster.sh                 # nodes on 127.0.0.1:7070, 7071, 7072
#
# Environment:
#   KILN_CLUSTER_DIR        data directories go under it (default ./kiln-cluster)
#   KILN_CLUSTER_BASE_PORT  first node's port; the others follow (default 7070)
#   KILN_BIN_DIR            use kiln-node and kiln from here instead of building
#                           a release (the tests point it at their debug build)
# Extra arguments go to every kiln-node (see `kiln-node --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

cluster_dir="${KILN_CLUSTER_DIR:-./kiln-cluster}"
base_port="${KILN_CLUSTER_BASE_PORT:-7070}"
if [ -z "${KILN_BIN_DIR:-}" ]; then
    install_missing_packages clang libclang-dev
    build_ui
    cargo build --release -p kiln-node -p kiln-client
    KILN_BIN_DIR="$CARGO_TARGET_DIR/release"
fi
node_binary="$KILN_BIN_DIR/kiln-node"
kiln_binary="$KILN_BIN_DIR/kiln"

pids=()
stop_all() {
    trap - INT TERM EXIT
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# Starts node $1 (1-based) with extra flags; waits until it prints its address.
start_node() {
    local index="$1"
    shift
    local port=$((base_port + index - 1))
    local directory="$cluster_dir/node$index"
    mkdir -p "$directory"
    "$node_binary" --data-dir "$directory/data" --listen "127.0.0.1:$port" "$@" \
        >"$directory/stdout.log" 2>"$directory/node.log" &
    pids+=("$!")
    local deadline=$((SECONDS + 120))
    until grep -q "^listening on" "$directory/stdout.log" 2>/dev/null; do
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "node $index exited; see $directory/node.log" >&2
            tail -20 "$directory/node.log" >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "node $index did not start within 120 s; see $directory/node.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "node $index: 127.0.0.1:$port (data in $directory/data, log in $directory/node.log)"
}

first="127.0.0.1:$base_port"
start_node 1 --zone zone-a "$@"
start_node 2 --join "$first" --zone zone-b "$@"
start_node 3 --join "$first" --zone zone-c "$@"

# Ready when every group has three voters.
deadline=$((SECONDS + 300))
until "$kiln_binary" --server "$first" cluster status --output json 2>/dev/null | python3 -c '
import json, sys
status = json.load(sys.stdin)
groups = status["groups"]
ok = groups and all(len(group["voters"]) == 3 and group["leader"] for group in groups)
sys.exit(0 if ok else 1)
'; do
    if [ $SECONDS -ge $deadline ]; then
        echo "the cluster did not reach 3 replicas per group within 300 s" >&2
        "$kiln_binary" --server "$first" cluster status >&2 || true
        exit 1
    fi
    sleep 1
done
echo "cluster ready: every group has 3 replicas"
"$kiln_binary" --server "$first" cluster status
echo "query any node, e.g.: $kiln_binary --server $first cluster status   (Ctrl-C stops the cluster)"
wait
