#!/usr/bin/env bash
# Peak RSS around the agent's first drain (not a test). Starts a python3 recursive busy loop and
# `kiln-agent --unwinder dwarf --frequency-hz 19` (no node: batches stay in the spool), reads the agent's
# /proc/PID/smaps (resident KiB summed per mapping, mappings over 2 MB named) and status every ~30 ms from
# 9.7 s to ~14 s (the first drain is at 10 s), then prints VmHWM. Needs root (BPF).
# Wrap it in `flock /tmp/kiln-bench.lock` when others benchmark on the same machine.
#
#   agent/bench/first_drain_rss.sh AGENT_BINARY OUT_DIR [ENV=VALUE ...]
#   (then: sort -k3 -n -r OUT_DIR/smaps | head -1   shows what was resident at the highest sample)
set -euo pipefail
BIN=$1
W=$2
shift 2
rm -rf "$W"
mkdir -p "$W"
python3 -c 'import time
def f(n): return 0 if n == 0 else f(n - 1) + 1
end = time.time() + 20
while time.time() < end: f(50)' &
PY=$!
env "$@" KILN_LOG=warn "$BIN" --server 127.0.0.1:9 --metrics-listen 127.0.0.1:0 --spool-dir "$W/spool" \
    --frequency-hz 19 --unwinder dwarf > "$W/out" 2> "$W/err" &
PID=$!
trap 'kill "$PID" "$PY" 2>/dev/null || true' EXIT
sleep 9.7
for i in $(seq 120); do
    awk -v i="$i" '/^[0-9a-f]+-[0-9a-f]+ / {name=$6; if (name=="") name="[anon]"} /^Rss:/ {r[name]+=$2; t+=$2}
        END {printf "%d TOTAL %d", i, t; for (n in r) if (r[n] > 2000) printf " %s=%d", n, r[n]; printf "\n"}' \
        "/proc/$PID/smaps" >> "$W/smaps"
    sleep 0.01
done
grep -E "VmHWM|VmRSS|Threads" "/proc/$PID/status"
kill -TERM "$PID"
wait "$PID" || true
kill "$PY" 2>/dev/null || true
wait "$PY" 2>/dev/null || true
trap - EXIT
