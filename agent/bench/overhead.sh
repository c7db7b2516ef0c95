#!/usr/bin/env bash
# Agent overhead benchmark (not a test): throughput of a CPU-bound workload (one spinning thread per CPU)
# with no profiler, with kiln-agent at 19 Hz and at 99 Hz, and with `perf record -F 19 -a -g`, in
# interleaved rounds so that background load hits every configuration alike. Reports median throughput
# ratios against the baseline, and the agent's CPU seconds and peak RSS. Needs root (BPF, perf).
#
#   agent/bench/overhead.sh [ROUNDS] [SECONDS]     (default 3 rounds of 20 s per configuration)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-20}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
BIN="$CARGO_TARGET_DIR/debug"
for binary in kiln-agent kiln-node; do
    [ -x "$BIN/$binary" ] || { echo "build first: cargo build --workspace --all-targets ($BIN/$binary missing)" >&2; exit 1; }
done
WORK=$(mktemp -d)
NODE_PID=""
cleanup() {
    if [ -n "$NODE_PID" ]; then
        kill "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
clang -O2 -fno-omit-frame-pointer -pthread -o "$WORK/spin" agent/bench/spin.c

KILN_LOG=warn "$BIN/kiln-node" --data-dir "$WORK/node" --listen 127.0.0.1:0 > "$WORK/node.out" 2>&1 &
NODE_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/node.out" && break; sleep 0.1; done
NODE=$(sed -n 's/^listening on //p' "$WORK/node.out" | head -1)

run_spin() { "$WORK/spin" "$SECONDS_PER_RUN"; }

# Starts the agent at $1 Hz, runs the workload, stops the agent; prints "throughput cpu_seconds rss_kib".
run_agent() {
    local hz=$1
    KILN_LOG=warn "$BIN/kiln-agent" --server "$NODE" --metrics-listen "" --spool-dir "$WORK/spool-$hz" \
        --frequency-hz "$hz" > /dev/null 2> "$WORK/agent-$hz.err" &
    local pid=$!
    sleep 3 # let it load BPF and settle: measure steady state
    local throughput
    throughput=$(run_spin)
    local ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$throughput $(echo "$ticks / $(getconf CLK_TCK)" | bc -l) $rss"
}

run_perf() {
    perf record -F 19 -a -g -o "$WORK/perf.data" -- sleep 10000 > /dev/null 2> "$WORK/perf.err" &
    local pid=$!
    sleep 3
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "failed"
        return
    fi
    local throughput
    throughput=$(run_spin)
    kill -INT "$pid"
    wait "$pid" || true
    echo "$throughput"
}

declare -a base a19 a99 perf19
declare -a cpu19 cpu99 rss19 rss99
for round in $(seq "$ROUNDS"); do
    base+=("$(run_spin)")
    read -r t c r < <(run_agent 19); a19+=("$t"); cpu19+=("$c"); rss19+=("$r")
    read -r t c r < <(run_agent 99); a99+=("$t"); cpu99+=("$c"); rss99+=("$r")
    perf19+=("$(run_perf)")
    echo "round $round: base ${base[-1]} agent19 ${a19[-1]} agent99 ${a99[-1]} perf19 ${perf19[-1]}" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
B=$(median "${base[@]}")
ratio() { echo "scale=5; $1 / $B" | bc -l; }
echo "workload: $(nproc) spinning threads, $SECONDS_PER_RUN s per run, $ROUNDS interleaved rounds, medians"
echo "baseline throughput: $B"
echo "agent 19 Hz: ratio $(ratio "$(median "${a19[@]}")"), agent CPU s per run: $(median "${cpu19[@]}"), peak RSS KiB: $(median "${rss19[@]}")"
echo "agent 99 Hz: ratio $(ratio "$(median "${a99[@]}")"), agent CPU s per run: $(median "${cpu99[@]}"), peak RSS KiB: $(median "${rss99[@]}")"
if printf '%s\n' "${perf19[@]}" | grep -q failed; then
    echo "perf record -F 19 -a -g: did not run here ($(head -c 300 "$WORK/perf.err"))"
else
    echo "perf record -F 19 -a -g: ratio $(ratio "$(median "${perf19[@]}")")"
fi
