#!/usr/bin/env bash
# DWARF unwinding overhead benchmark (not a test). Interleaved rounds of: baseline (no profiler),
# kiln-agent --unwinder fp and --unwinder dwarf at 19 Hz and at 99 Hz, and `perf record -F 19 -a -g`,
# over a CPU-bound workload (one spinning thread per CPU). Reports, as medians:
#   - throughput ratios against the baseline, and dwarf against fp at the same rate;
#   - agent CPU seconds per run (utime+stime) and peak RSS (VmHWM);
#   - BPF program cost per sample (run_time_ns / run_cnt from the program's fdinfo, with
#     kernel.bpf_stats_enabled=1 during the run) and user-space unwind time per DWARF sample
#     (kiln_agent_dwarf_unwind_nanoseconds / kiln_agent_dwarf_unwound).
# Uses the RELEASE builds (cargo build --release -p kiln-agent -p kiln-node -p kiln-client). Needs root (BPF, perf).
# Wrap it in `flock /tmp/kiln-bench.lock` when others benchmark on the same machine.
#
#   agent/bench/unwind.sh [ROUNDS] [SECONDS]     (default 3 rounds of 15 s per configuration)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-15}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
BIN="$CARGO_TARGET_DIR/release"
# shellcheck source=agent/bench/common.sh
source agent/bench/common.sh
bench_start "cargo build --release -p kiln-agent -p kiln-node -p kiln-client"
bench_enable_bpf_stats

metric() { # ADDRESS NAME -> value of kiln_agent_NAME(_total), 0 when absent
    curl -s "http://$1/metrics" | awk -v a="kiln_agent_$2" -v b="kiln_agent_$2_total" '$1 == a || $1 == b {print $2; found=1} END {if (!found) print 0}'
}

# Starts the agent with $1 = unwinder, $2 = Hz, runs the workload, stops the agent. Prints
# "throughput cpu_seconds rss_kib bpf_ns_per_run unwind_ns_per_sample".
run_agent() {
    local unwinder=$1 hz=$2
    local tag="$unwinder-$hz"
    rm -rf "$WORK/spool-$tag"
    KILN_LOG=warn "$BIN/kiln-agent" --server "$NODE" --metrics-listen 127.0.0.1:0 --spool-dir "$WORK/spool-$tag" \
        --frequency-hz "$hz" --unwinder "$unwinder" > "$WORK/agent-$tag.out" 2> "$WORK/agent-$tag.err" &
    local pid=$!
    sleep 3 # let it load BPF and settle: measure steady state
    local metrics
    metrics=$(sed -n 's/^metrics listening on //p' "$WORK/agent-$tag.out" | head -1)
    local throughput usage
    throughput=$(run_spin)
    usage=$(process_usage "$pid")
    local run_time run_count
    run_time=$(bpf_prog_stat "$pid" run_time_ns)
    run_count=$(bpf_prog_stat "$pid" run_cnt)
    local unwind_ns unwound
    unwind_ns=$(metric "$metrics" dwarf_unwind_nanoseconds)
    unwound=$(metric "$metrics" dwarf_unwound)
    kill -TERM "$pid"
    wait "$pid" || true
    local per_run per_sample
    per_run=$(echo "if ($run_count > 0) $run_time / $run_count else 0" | bc -l)
    per_sample=$(echo "if ($unwound > 0) $unwind_ns / $unwound else 0" | bc -l)
    echo "$throughput $usage $per_run $per_sample"
}

CONFIGS="fp-19 dwarf-19 fp-99 dwarf-99"
declare -A T C R B U
declare -a base perf19
for round in $(seq "$ROUNDS"); do
    base+=("$(run_spin)")
    line="round $round: base ${base[-1]}"
    for config in $CONFIGS; do
        read -r t c r b u < <(run_agent "${config%-*}" "${config#*-}")
        T[$config]+="$t "; C[$config]+="$c "; R[$config]+="$r "; B[$config]+="$b "; U[$config]+="$u "
        line+=" $config $t"
    done
    perf19+=("$(run_perf)")
    echo "$line perf19 ${perf19[-1]}" >&2
done

BASE=$(median "${base[@]}")
ratio() { echo "scale=4; $1 / $2" | bc -l; }
echo "workload: $(nproc) spinning threads, $SECONDS_PER_RUN s per run, $ROUNDS interleaved rounds, medians; release builds"
echo "baseline throughput: $BASE"
for config in $CONFIGS; do
    # shellcheck disable=SC2086
    t=$(median ${T[$config]}); c=$(median ${C[$config]}); r=$(median ${R[$config]}); b=$(median ${B[$config]}); u=$(median ${U[$config]})
    printf '%-9s throughput ratio %s  agent CPU s/run %.2f  peak RSS %.1f MB  BPF ns/run %.0f  unwind ns/DWARF sample %.0f\n' \
        "$config" "$(ratio "$t" "$BASE")" "$c" "$(echo "$r / 1024" | bc -l)" "$b" "$u"
done
for hz in 19 99; do
    # shellcheck disable=SC2086
    echo "dwarf vs fp at $hz Hz: throughput $(ratio "$(median ${T[dwarf-$hz]})" "$(median ${T[fp-$hz]})"), agent CPU $(ratio "$(median ${C[dwarf-$hz]})" "$(median ${C[fp-$hz]})"), BPF ns/run $(ratio "$(median ${B[dwarf-$hz]})" "$(median ${B[fp-$hz]})")"
done
report_perf "$BASE" "${perf19[@]}"
