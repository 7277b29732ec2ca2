#!/usr/bin/env bash
# What one operation costs a dev server: its CPU time per operation under load, or the
# user-space instructions it executes per operation (valgrind's callgrind).
#
#   benches/ops_cost.sh cpu       [loadgen kv flags]   server CPU µs per operation
#   benches/ops_cost.sh callgrind [loadgen kv flags]   user-space instructions per operation
#
# Both start `cairn agent --dev` on 127.0.0.1 (HTTP and DNS off), preload KEYS keys with
# VALUE_SIZE-byte values, then run `loadgen kv --threads 1` with the flags given (default:
# `--workload read --consistency stale --connections 64`).
# - cpu: loadgen runs WARMUP + DURATION seconds; the server's CPU time (utime + stime from
#   /proc/PID/stat) is read over the middle WINDOW seconds and divided by the operations
#   loadgen reports per second. The server should be the bottleneck (it uses about one
#   core): then µs per operation is what limits throughput, and it varies less between
#   runs than ops/s does.
# - callgrind: the server runs under callgrind; its counters are zeroed after the preload
#   and dumped after a DURATION-second run (no warm-up); the dump's instruction count is
#   divided by the operations done. Deterministic enough to compare builds (kernel time is
#   not counted); the server is ~50× slower, so compare builds with the same flags only.
#
# Environment (defaults): CAIRN (target/release/cairn), LOADGEN (target/release/loadgen),
# PORT (8399), KEYS (100000 for cpu, 20000 for callgrind), VALUE_SIZE (256), DURATION (8
# for cpu, 4 for callgrind), WARMUP (2), WINDOW (4).
# The README's "Cluster figures" (2026-11-25, 12:00) were taken with it.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
PORT=${PORT:-8399}
VALUE_SIZE=${VALUE_SIZE:-256}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-4}

die() { echo "benches/ops_cost.sh: $*" >&2; exit 2; }
MODE=${1:-}
[[ $MODE == cpu || $MODE == callgrind ]] || die "usage: benches/ops_cost.sh cpu|callgrind [loadgen kv flags]"
shift
FLAGS=("$@")
[[ ${#FLAGS[@]} -gt 0 ]] || FLAGS=(--workload read --consistency stale --connections 64)
[[ -x $CAIRN ]] || die "no $CAIRN: cargo build --release -p cairn"
[[ -x $LOADGEN ]] || die "no $LOADGEN: cargo build --release -p loadgen"

WORK=$(mktemp -d /tmp/ops_cost.XXXXXX)
SERVER=
cleanup() {
    [[ -n $SERVER ]] && kill -9 "$SERVER" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

AGENT=(agent --dev --http-port -1 --dns-port -1 --server-port "$PORT" --serf-lan-port $((PORT - 1)))
lg() { "$LOADGEN" kv --servers "127.0.0.1:$PORT" --threads 1 --value-size "$VALUE_SIZE" --keys "$KEYS" "$@"; }
ops_per_s() { awk '$1 == "ops/s" { print $2 }' "$1"; }
wait_up() { # the agent answers within 60 s (callgrind starts slowly)
    for _ in $(seq 1 600); do
        "$CAIRN" operator raft list-peers --rpc-addr "127.0.0.1:$PORT" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "the dev agent did not come up (log: $WORK/agent.log)"
}

if [[ $MODE == cpu ]]; then
    KEYS=${KEYS:-100000}
    DURATION=${DURATION:-8}
    "$CAIRN" "${AGENT[@]}" >"$WORK/agent.log" 2>&1 &
    SERVER=$!
    wait_up
    lg --workload read --preload --connections 4 --duration 1 --warmup 0 >/dev/null 2>&1
    lg "${FLAGS[@]}" --duration "$DURATION" --warmup "$WARMUP" >"$WORK/lg.out" 2>&1 &
    LG=$!
    ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER/stat"; }
    sleep $((WARMUP + (DURATION - WINDOW) / 2))
    t0=$(ticks)
    sleep "$WINDOW"
    t1=$(ticks)
    wait "$LG"
    ops=$(ops_per_s "$WORK/lg.out")
    [[ -n $ops ]] || die "loadgen reported no ops/s: $(tail -3 "$WORK/lg.out")"
    hz=$(getconf CLK_TCK)
    awk -v t="$((t1 - t0))" -v hz="$hz" -v w="$WINDOW" -v ops="$ops" 'BEGIN {
        printf "ops/s %d, server CPU %.0f %% of a core, %.2f µs per operation\n",
            ops, 100 * t / hz / w, 1e6 * t / hz / w / ops }'
else
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
        die "needs valgrind (apt-get install -y valgrind)"
    KEYS=${KEYS:-20000}
    DURATION=${DURATION:-4}
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
        "$CAIRN" "${AGENT[@]}" >"$WORK/agent.log" 2>&1 &
    SERVER=$!
    wait_up
    lg --workload read --preload --connections 4 --duration 1 --warmup 0 --timeout-ms 20000 \
        >/dev/null 2>&1
    callgrind_control -z "$SERVER" >/dev/null 2>&1
    lg "${FLAGS[@]}" --duration "$DURATION" --warmup 0 --timeout-ms 20000 >"$WORK/lg.out" 2>&1
    callgrind_control -d "$SERVER" >/dev/null 2>&1
    sleep 1
    ops=$(ops_per_s "$WORK/lg.out")
    [[ -n $ops ]] || die "loadgen reported no ops/s: $(tail -3 "$WORK/lg.out")"
    ir=$(cat "$WORK"/cg.out.* | awk '$1 == "summary:" { s += $2 } END { print s + 0 }')
    awk -v ir="$ir" -v ops="$ops" -v d="$DURATION" 'BEGIN {
        printf "ops %d in %d s under callgrind, %d instructions, %.0f per operation\n",
            ops * d, d, ir, ir / (ops * d) }'
fi
