# Shared by the agent benchmarks (overhead.sh, unwind.sh, sample_cost.sh, steady_cost.sh); sourced, not run. The caller sets BIN (the
# directory with kiln-node and kiln-agent) and SECONDS_PER_RUN, then calls bench_start.

# Sets ROUNDS, SECONDS_PER_RUN and WARMUP from the script's arguments (defaults 5 rounds, 20 s windows,
# 22 s warm-up), and BIN to the release builds of the shared target directory.
bench_arguments() {
    ROUNDS=${1:-5}
    SECONDS_PER_RUN=${2:-20}
    WARMUP=${3:-22}
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/kiln-target}"
    BIN="$CARGO_TARGET_DIR/release"
}

# Checks the binaries, makes WORK, builds the spinning workload, starts a local kiln-node (NODE is its
# address) and arranges for all of it to go away at exit. $1: the build command to suggest.
bench_start() {
    local build_hint=$1
    for binary in kiln-agent kiln-node; do
        [ -x "$BIN/$binary" ] || { echo "build first: $build_hint ($BIN/$binary missing)" >&2; exit 1; }
    done
    WORK=$(mktemp -d)
    NODE_PID=""
    trap bench_cleanup EXIT
    clang -O2 -fno-omit-frame-pointer -pthread -o "$WORK/spin" agent/bench/spin.c
    KILN_LOG=warn "$BIN/kiln-node" --data-dir "$WORK/node" --listen 127.0.0.1:0 > "$WORK/node.out" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$WORK/node.out" && break; sleep 0.1; done
    NODE=$(sed -n 's/^listening on //p' "$WORK/node.out" | head -1)
}

# Turns on the kernel's BPF run-time statistics (run_time_ns and run_cnt in a program's fdinfo) for the
# benchmark; bench_cleanup puts the setting back.
bench_enable_bpf_stats() {
    BPF_STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
    sysctl -qw kernel.bpf_stats_enabled=1
}

bench_cleanup() {
    if [ -n "${BPF_STATS_BEFORE:-}" ]; then
        sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_BEFORE" || true
    fi
    if [ -n "$NODE_PID" ]; then
        kill "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}

# The workload: prints its throughput (loop iterations).
run_spin() { "$WORK/spin" "$SECONDS_PER_RUN"; }

# The workload under `perf record -F 19 -a -g`; prints its throughput, or "failed" when perf cannot run.
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

# CPU time (utime + stime) of process $1 in clock ticks (getconf CLK_TCK per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# CPU seconds (utime + stime) and peak RSS in KiB (VmHWM) of process $1, as "seconds kib".
process_usage() {
    local rss
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$1/status")
    echo "$(echo "$(cpu_ticks "$1") / $(getconf CLK_TCK)" | bc -l) $rss"
}

# The sum of fdinfo field $2 (run_time_ns, run_cnt) over the BPF programs process $1 holds (needs
# bench_enable_bpf_stats for non-zero values).
bpf_prog_stat() {
    local total=0 info
    for info in /proc/"$1"/fdinfo/*; do
        if grep -q '^prog_type' "$info" 2>/dev/null; then
            total=$((total + $(awk -v field="$2" '$1 == field ":" {print $2}' "$info")))
        fi
    done
    echo "$total"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }

# Prints "perf record -F 19 -a -g: ratio R" for the perf runs $2.. against baseline $1.
report_perf() {
    local base=$1
    shift
    if printf '%s\n' "$@" | grep -q failed; then
        echo "perf record -F 19 -a -g: did not run here ($(head -c 300 "$WORK/perf.err"))"
    else
        echo "perf record -F 19 -a -g: ratio $(echo "scale=4; $(median "$@") / $base" | bc -l)"
    fi
}

# Prints configurations $2.. starting at position ROUND-1 ($1) and wrapping around: each round starts one
# position later than the one before, so that a drift of the machine's speed within a round does not
# always favour the same configuration.
rotated() {
    local round=$1
    shift
    local configs=("$@") position
    for position in "${!configs[@]}"; do
        echo "${configs[$(( (position + round - 1) % ${#configs[@]} ))]}"
    done
}

# cgroup v1 cpuacct groups: the CPU time of everything started in one, in nanoseconds, exited processes
# included. Needs root and the hierarchy at $CPUACCT.
CPUACCT=/sys/fs/cgroup/cpuacct

# Makes the group $CPUACCT/$1 and prints its path.
cpuacct_create() {
    [ -d "$CPUACCT" ] || { echo "needs the cgroup v1 cpuacct hierarchy at $CPUACCT" >&2; exit 1; }
    mkdir "$CPUACCT/$1"
    echo "$CPUACCT/$1"
}

# CPU nanoseconds used so far in group $1.
cpuacct_ns() { cat "$1/cpuacct.usage"; }

# Starts "${@:2}" in the background inside group $1; its pid (after exec) is the caller's $!.
cpuacct_start() {
    # shellcheck disable=SC2016
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$@" &
}

# Removes groups $@, moving whatever is still in them back to the root first (a cgroup can be removed
# only once empty). Best effort: it runs from exit traps, where the processes may be gone already.
cpuacct_remove() {
    local group pid
    for group in "$@"; do
        [ -d "$group" ] || continue
        while read -r pid; do echo "$pid" > "$CPUACCT/cgroup.procs" 2>/dev/null || true; done < "$group/cgroup.procs"
        rmdir "$group" 2>/dev/null || true
    done
}
