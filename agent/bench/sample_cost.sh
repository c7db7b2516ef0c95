#!/usr/bin/env bash
# Per-sample cost benchmark (not a test), issue 4: what kiln-agent and `perf record -a -g` take from a
# running program, split into the part the kernel spends inside each sampling interrupt (charged to the
# interrupted task, which overhead.sh cannot see) and the part the profiler's own process spends.
#
# Setup: the profiler (and the local kiln-node the agent pushes to) run on CPU 0 only (taskset); CPU 1
# runs only gaps.c, a thread reading the clock in a tight loop that sums every step longer than 500 ns.
# Both profilers sample every CPU, so each sample on CPU 1 interrupts gaps.c and shows as a gap, while
# the profilers' processes run on CPU 0 and do not. Per configuration, over the window only:
#   - in-kernel share: gap time on CPU 1 ("short" gaps, 0.5-100 us) over the same round's baseline
#     (no profiler), in % of that CPU. The timer interrupt, the stack walks and, for the agent, its BPF
#     program, for perf the write into its ring buffer and the wake-ups of its reader, are all in it.
#     Divided by the samples taken on CPU 1 (frequency x window) it is the cost per sample.
#   - process share: the profiler's CPU time, from a cpuacct cgroup (nanoseconds, every thread, dead ones
#     included), in % of the machine (window x CPUs).
#   - node share: the same for the local kiln-node (agent only; in production it is on other machines).
# The sum of the first two is the profiler's overhead on the host by accounting; medians over rounds.
# Rounds rotate the order of the configurations. Needs root (BPF, perf, cgroups), 2+ CPUs, cgroup v1
# cpuacct mounted at /sys/fs/cgroup/cpuacct, and the release builds.
#
#   agent/bench/sample_cost.sh [ROUNDS] [SECONDS] [WARMUP]        (default 5 rounds, 20 s, 22 s warm-up)
#   KILN_SAMPLE_COST_CONFIGS="fp-19 perf-19" agent/bench/sample_cost.sh 6 20 22
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs or more" >&2; exit 1; }
# shellcheck source=agent/bench/common.sh
source agent/bench/common.sh
bench_arguments "$@"
bench_start "cargo build --release -p kiln-agent -p kiln-node -p kiln-client"
bench_enable_bpf_stats
CPUS=$(nproc)
clang -O2 -o "$WORK/gaps" agent/bench/gaps.c
PROFILER_CG=$(cpuacct_create "kiln-bench-profiler-$$")
NODE_CG=$(cpuacct_create "kiln-bench-node-$$")
trap 'cpuacct_remove "$PROFILER_CG" "$NODE_CG"; bench_cleanup' EXIT
echo "$NODE_PID" > "$NODE_CG/cgroup.procs"
taskset -a -pc 0 "$NODE_PID" > /dev/null

# Starts "$@" on CPU 0 inside the profiler cgroup; its pid (after exec) is in $! of the caller's job.
start_profiler() { cpuacct_start "$PROFILER_CG" taskset -c 0 "$@"; }

# Runs gaps.c on CPU 1 while profiler $1 (0: none) runs; prints "short_ns short_count process_ns node_ns
# bpf_ns window_s".
measure_window() {
    local pid=$1 process0 node0 bpf0=0 bpf1=0 start end line
    process0=$(cpuacct_ns "$PROFILER_CG"); node0=$(cpuacct_ns "$NODE_CG")
    [ "$pid" = 0 ] || bpf0=$(bpf_prog_stat "$pid" run_time_ns)
    start=$(date +%s.%N)
    line=$("$WORK/gaps" 1 "$SECONDS_PER_RUN")
    end=$(date +%s.%N)
    [ "$pid" = 0 ] || bpf1=$(bpf_prog_stat "$pid" run_time_ns)
    local short_ns short_count
    short_ns=$(sed 's/.*short_ns=\([0-9]*\).*/\1/' <<< "$line")
    short_count=$(sed 's/.*short_count=\([0-9]*\).*/\1/' <<< "$line")
    echo "$short_ns $short_count $(( $(cpuacct_ns "$PROFILER_CG") - process0 )) $(( $(cpuacct_ns "$NODE_CG") - node0 )) $((bpf1 - bpf0)) $(echo "$end - $start" | bc -l)"
}

run_config() {
    local config=$1 pid
    case $config in
        base) measure_window 0; return ;;
        perf-*)
            start_profiler perf record -F "${config#perf-}" -a -g -o "$WORK/perf.data" -- sleep 100000 > /dev/null 2> "$WORK/perf.err"
            pid=$! ;;
        *)
            rm -rf "$WORK/spool"
            KILN_LOG=warn start_profiler "$BIN/kiln-agent" --server "$NODE" --metrics-listen "" --spool-dir "$WORK/spool" \
                --frequency-hz "${config#*-}" --unwinder "${config%-*}" > /dev/null 2> "$WORK/agent.err"
            pid=$! ;;
    esac
    sleep "$WARMUP"
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$config did not run: $(head -c 300 "$WORK/perf.err" "$WORK/agent.err" 2>/dev/null)" >&2
        exit 1
    fi
    measure_window "$pid"
    kill -INT "$pid"
    wait "$pid" || true
    rm -f "$WORK/perf.data"
}

CONFIGS=${KILN_SAMPLE_COST_CONFIGS:-"fp-19 dwarf-19 perf-19 fp-999 dwarf-999 perf-999"}
declare -A KERNEL PER_SAMPLE GAP_COUNT PROCESS NODE_SHARE BPF TOTAL
read -r -a ORDER <<< "base $CONFIGS"
for round in $(seq "$ROUNDS"); do
    declare -A MEASURED=()
    line="round $round:"
    for config in $(rotated "$round" "${ORDER[@]}"); do
        MEASURED[$config]=$(run_config "$config")
        read -r short_ns _ <<< "${MEASURED[$config]}"
        line+=" $config $short_ns"
    done
    echo "$line (gap ns on CPU 1)" >&2
    read -r base_short_ns base_short_count _ _ _ base_window <<< "${MEASURED[base]}"
    for config in $CONFIGS; do
        read -r short_ns short_count process_ns node_ns bpf_ns window <<< "${MEASURED[$config]}"
        hz=${config#*-}
        # Gap time per second over the baseline's, in % of CPU 1; per sample, in microseconds.
        excess_per_s=$(echo "$short_ns / $window - $base_short_ns / $base_window" | bc -l)
        KERNEL[$config]+="$(echo "100 * $excess_per_s / 1000000000" | bc -l) "
        PER_SAMPLE[$config]+="$(echo "$excess_per_s / $hz / 1000" | bc -l) "
        GAP_COUNT[$config]+="$(echo "($short_count / $window - $base_short_count / $base_window) / $hz" | bc -l) "
        PROCESS[$config]+="$(echo "100 * $process_ns / 1000000000 / ($window * $CPUS)" | bc -l) "
        NODE_SHARE[$config]+="$(echo "100 * $node_ns / 1000000000 / ($window * $CPUS)" | bc -l) "
        BPF[$config]+="$(echo "$bpf_ns / ($hz * $window * $CPUS) / 1000" | bc -l) "
        TOTAL[$config]+="$(echo "100 * $excess_per_s / 1000000000 + 100 * $process_ns / 1000000000 / ($window * $CPUS)" | bc -l) "
    done
done

echo "gaps.c on CPU 1, profilers and node on CPU 0; $SECONDS_PER_RUN s windows after $WARMUP s warm-up, $ROUNDS rounds (order rotated); medians"
printf '%-10s %-12s %-36s %-10s %-12s %-10s %-9s %-9s\n' config "in-kernel %" "per-round in-kernel % of CPU 1" "us/sample" "BPF us/smpl" "process %" "total %" "node %"
for config in $CONFIGS; do
    # shellcheck disable=SC2086
    printf '%-10s %-12.4f %-36s %-10.2f %-12.2f %-10.4f %-9.4f %-9.4f\n' "$config" \
        "$(median ${KERNEL[$config]})" "$(printf '%.4f ' ${KERNEL[$config]})" \
        "$(median ${PER_SAMPLE[$config]})" "$(median ${BPF[$config]})" \
        "$(median ${PROCESS[$config]})" "$(median ${TOTAL[$config]})" "$(median ${NODE_SHARE[$config]})"
done
echo "(extra gaps per sample, medians: $(for config in $CONFIGS; do printf '%s %.2f  ' "$config" "$(median ${GAP_COUNT[$config]})"; done))"
