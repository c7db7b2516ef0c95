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
# shellcheck source=agent/bench/common.sh
source agent/bench/common.sh
bench_start "cargo build --workspace --all-targets"

# Starts the agent at $1 Hz, runs the workload, stops the agent; prints "throughput cpu_seconds rss_kib".
run_agent() {
    local hz=$1
    KILN_LOG=warn "$BIN/kiln-agent" --server "$NODE" --metrics-listen "" --spool-dir "$WORK/spool-$hz" \
        --frequency-hz "$hz" > /dev/null 2> "$WORK/agent-$hz.err" &
    local pid=$!
    sleep 3 # let it load BPF and settle: measure steady state
    local throughput usage
    throughput=$(run_spin)
    usage=$(process_usage "$pid")
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$throughput $usage"
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

B=$(median "${base[@]}")
ratio() { echo "scale=5; $1 / $B" | bc -l; }
echo "workload: $(nproc) spinning threads, $SECONDS_PER_RUN s per run, $ROUNDS interleaved rounds, medians"
echo "baseline throughput: $B"
echo "agent 19 Hz: ratio $(ratio "$(median "${a19[@]}")"), agent CPU s per run: $(median "${cpu19[@]}"), peak RSS KiB: $(median "${rss19[@]}")"
echo "agent 99 Hz: ratio $(ratio "$(median "${a99[@]}")"), agent CPU s per run: $(median "${cpu99[@]}"), peak RSS KiB: $(median "${rss99[@]}")"
report_perf "$B" "${perf19[@]}"
