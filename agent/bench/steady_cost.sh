#!/usr/bin/env bash
# Steady-state cost benchmark (not a test), issue 4: the CPU that a long-running kiln-agent and a
# long-running `perf record -a -g` take on a host with a life of its own.
#
# sample_cost.sh starts each profiler afresh for every window, so its agent numbers include the first
# symbolization of everything on the host. An agent runs for days; this measures it after a warm-up.
# The host's life: a CPU-bound program on every CPU (spin.c) and, every 2 s, one short-lived command
# from a fixed list (new processes of known programs, as on a real host), plus a local kiln-node
# that the agent pushes to.
#
# For each configuration, in each round: start the profiler in a cgroup v1 cpuacct group, wait the
# warm-up, then measure its CPU time (every thread, in nanoseconds) over WINDOWS windows of SECONDS
# each. Configurations:
#   agent        the release kiln-agent at HZ (fp unwinder; KILN_STEADY_COST_UNWINDER=dwarf for DWARF)
#   agent=PATH   another kiln-agent binary (for comparing two builds in one run)
#   perf         perf record -F HZ -a -g (writes perf.data; nothing symbolized)
# Needs root, cgroup v1 cpuacct at /sys/fs/cgroup/cpuacct, perf, python3, and the release builds.
#
#   agent/bench/steady_cost.sh [ROUNDS] [SECONDS] [WARMUP]    (default 2 rounds, 30 s windows, 45 s)
#   KILN_STEADY_COST_CONFIGS="agent agent=/tmp/old-agent perf" KILN_STEADY_COST_WINDOWS=3 HZ=19 \
#       agent/bench/steady_cost.sh 2 30 45
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v perf > /dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }

# shellcheck source=agent/bench/common.sh
source agent/bench/common.sh
bench_arguments "${1:-2}" "${2:-30}" "${3:-45}"
WINDOWS=${KILN_STEADY_COST_WINDOWS:-3}
HZ=${HZ:-19}
CONFIGS=${KILN_STEADY_COST_CONFIGS:-"agent perf"}
UNWINDER=${KILN_STEADY_COST_UNWINDER:-fp}
bench_start "cargo build --release -p kiln-agent -p kiln-node"

PROFILER_CG=$(cpuacct_create "kiln-steady-profiler-$$")
LIFE_PIDS=()
cleanup() {
    # Best effort, from the exit trap: the host's life may have ended already.
    for pid in "${LIFE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    cpuacct_remove "$PROFILER_CG"
    bench_cleanup
}
trap cleanup EXIT

# The host's life, for the whole run.
"$WORK/spin" 1000000 > /dev/null &
LIFE_PIDS+=($!)
(
    commands=(
        "gzip -c $BIN/kiln-agent"
        "python3 -c 'sum(range(2000000))'"
        "sort -r /etc/services"
        "ls -lR /usr/share/doc"
        "sh -c 'for i in \$(seq 2000); do :; done'"
        "date"
    )
    while true; do
        for command in "${commands[@]}"; do
            sh -c "$command" > /dev/null 2>&1 || true
            sleep 2
        done
    done
) &
LIFE_PIDS+=($!)

# Runs one configuration: prints the profiler's CPU nanoseconds per window, then its peak RSS in KiB.
run_config() {
    local config=$1 pid
    case $config in
        perf)
            cpuacct_start "$PROFILER_CG" perf record -F "$HZ" -a -g -o "$WORK/perf.data" -- sleep 100000 > /dev/null 2> "$WORK/profiler.err"
            pid=$! ;;
        agent | agent=*)
            local binary=$BIN/kiln-agent
            [ "$config" = agent ] || binary=${config#agent=}
            rm -rf "$WORK/spool"
            cpuacct_start "$PROFILER_CG" env KILN_LOG=warn "$binary" --server "$NODE" --metrics-listen "" --spool-dir "$WORK/spool" \
                --frequency-hz "$HZ" --unwinder "$UNWINDER" > /dev/null 2> "$WORK/profiler.err"
            pid=$! ;;
        *) echo "unknown configuration $config" >&2; exit 1 ;;
    esac
    sleep "$WARMUP"
    kill -0 "$pid" 2>/dev/null || { echo "$config did not run: $(head -c 300 "$WORK/profiler.err")" >&2; exit 1; }
    local windows="" before after
    for _ in $(seq "$WINDOWS"); do
        before=$(cpuacct_ns "$PROFILER_CG")
        sleep "$SECONDS_PER_RUN"
        after=$(cpuacct_ns "$PROFILER_CG")
        windows+="$((after - before)) "
    done
    local peak_kib
    peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill -INT "$pid"
    wait "$pid" || true
    rm -f "$WORK/perf.data"
    echo "$windows$peak_kib"
}

CPUS=$(nproc)
declare -A SHARES PEAKS
read -r -a ORDER <<< "$CONFIGS"
for round in $(seq "$ROUNDS"); do
    for config in $(rotated "$round" "${ORDER[@]}"); do
        read -r -a measured <<< "$(run_config "$config")"
        peak=${measured[-1]}
        unset 'measured[-1]'
        line="round $round $config:"
        for ns in "${measured[@]}"; do
            # The profiler's share of the whole machine in the window, in %.
            share=$(echo "100 * $ns / ($SECONDS_PER_RUN * $CPUS * 1000000000)" | bc -l)
            SHARES[$config]+="$share "
            line+=" $(printf '%.4f' "$share")%"
        done
        PEAKS[$config]+="$peak "
        echo "$line (peak RSS $((peak / 1024)) MiB)" >&2
    done
done

echo
echo "steady state at $HZ Hz, agents with --unwinder $UNWINDER, $ROUNDS rounds x $WINDOWS windows of ${SECONDS_PER_RUN} s after ${WARMUP} s, $CPUS CPUs"
printf '%-40s %12s %12s %12s %14s\n' configuration "mean %" "min %" "max %" "peak RSS MiB"
for config in $CONFIGS; do
    read -r mean min max <<< "$(tr ' ' '\n' <<< "${SHARES[$config]}" | awk 'NF {
        sum += $1; if (min == "" || $1 < min) min = $1; if ($1 > max) max = $1; n++ }
        END { printf "%.4f %.4f %.4f", sum / n, min, max }')"
    peak=$(tr ' ' '\n' <<< "${PEAKS[$config]}" | sort -n | tail -1)
    printf '%-40s %12s %12s %12s %14s\n' "$config" "$mean" "$min" "$max" "$((peak / 1024))"
done
