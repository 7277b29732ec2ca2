#!/usr/bin/env bash
# Resident memory of a pool's agents: one server and N-1 client agents of CAIRN on
# loopback (started as benches/gossip_vs_serf.sh starts them: `--http-port -1
# --dns-port -1`, all at once, --retry-join to the server), left alone SETTLE_S seconds.
#
#   benches/agent_rss.sh [N]      (default 64)
#
# Prints the clients' mean VmRSS, the server's VmRSS, and where one client's and the
# server's resident pages are (Rss per mapping, from /proc/PID/smaps). The commands
# behind the README's "Gossip figures" that compare builds of one change (run it once
# per build, alternating). Unlike gossip_vs_serf.sh it kills nobody and polls nobody,
# so nothing but the agents' own life runs.
#
# Environment (defaults): CAIRN (target/release/cairn), BASE_PORT (24000; ports
# BASE_PORT..BASE_PORT+2N+1, below the ephemeral range), SETTLE_S (25).
# Everything started here is killed (SIGKILL) on exit.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
BASE_PORT=${BASE_PORT:-24000}
SETTLE_S=${SETTLE_S:-25}
N=${1:-64}

die() { echo "benches/agent_rss.sh: $*" >&2; exit 2; }
[[ $N =~ ^[0-9]+$ ]] && ((N >= 2 && N <= 1000)) || die "N must be 2..1000 (got $N)"
((BASE_PORT >= 1024 && BASE_PORT + 2 * N + 1 < 32768)) || die "BASE_PORT+2N+1 must be below 32768"
[[ -x $CAIRN ]] || die "no $CAIRN: cargo build --release -p cairn"

WORK=$(mktemp -d -t agent-rss.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

agent() { # i [extra args...]: agent i on ports BASE_PORT+2i (RPC) and +2i+1 (gossip)
    local i=$1
    shift
    "$CAIRN" agent --node "a$i" --data-dir "$WORK/a$i" --bind 127.0.0.1 \
        --server-port $((BASE_PORT + 2 * i)) --serf-lan-port $((BASE_PORT + 2 * i + 1)) \
        --http-port -1 --dns-port -1 "$@" >"$WORK/a$i.log" 2>&1 &
    PIDS+=($!)
}
agent 0 --server --bootstrap-expect 1
sleep 1
for ((i = 1; i < N; i++)); do agent "$i" --retry-join "127.0.0.1:$((BASE_PORT + 1))"; done
sleep "$SETTLE_S"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
breakdown() { # pid: Rss per mapping (path and permissions), largest first
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) " " $2 }
         /^Rss:/ { r[name] += $2 }
         END { for (k in r) if (r[k] > 0) printf "  %6d kB  %s\n", r[k], k }' \
        "/proc/$1/smaps" | sort -rn | head -14
}
for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "an agent exited (logs in $WORK)"; done
total=0
for p in "${PIDS[@]:1}"; do total=$((total + $(rss "$p"))); done
echo "cairn: $(basename "$CAIRN"), N=$N, ${SETTLE_S} s after start"
echo "clients' mean VmRSS: $((total / (N - 1))) kB; server VmRSS: $(rss "${PIDS[0]}") kB"
echo "one client ($((N / 2))):"
breakdown "${PIDS[$((N / 2))]}"
echo "the server:"
breakdown "${PIDS[0]}"
