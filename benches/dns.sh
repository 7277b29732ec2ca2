#!/usr/bin/env bash
# SRV answers/s from one `cairn agent --dev` (issue 7, item 5: the DNS goal), with dnsperf.
#
#   benches/dns.sh
#
# Starts a dev agent on free ports (HTTP, DNS, server; gossip off), registers `web`
# (port 8080, no checks, so it passes) through PUT /v1/agent/service/register, waits until
# `web.service.consul SRV` is answered, runs dnsperf for WARMUP s (not reported) and then
# DURATION s, prints dnsperf's summary, the CPU time of the agent (from /proc/PID/stat)
# and of dnsperf (bash `times`) over the measured run as µs per answer, and `uptime`.
# Stops everything it started.
#
# Environment (defaults): CAIRN (target/release/cairn, or $CARGO_TARGET_DIR/release/cairn),
# DURATION (10), WARMUP (2), DNS_CLIENTS (64 UDP sockets), DNS_OUTSTANDING (64 queries in
# flight), DNS_THREADS (2), AGENT_ARGS (extra `cairn agent` flags), PERF (1: record a
# profile of the agent during the run into $WORK/perf.data; the directory is then kept),
# KEEP (1 keeps the work directory).
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cairn}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
DNS_CLIENTS=${DNS_CLIENTS:-64}
DNS_OUTSTANDING=${DNS_OUTSTANDING:-64}
DNS_THREADS=${DNS_THREADS:-2}
AGENT_ARGS=${AGENT_ARGS:-}
PERF=${PERF:-0}
KEEP=${KEEP:-0}
die() { echo "dns.sh: $*" >&2; exit 2; }
[[ -x $CAIRN ]] || die "no cairn binary at $CAIRN (cargo build --release)"
command -v dnsperf >/dev/null || die "needs dnsperf (apt-get install -y dnsperf)"
for v in DURATION WARMUP DNS_CLIENTS DNS_OUTSTANDING DNS_THREADS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number"
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if ((KEEP)); then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# A free port in 20000-29999, free for TCP and UDP.
free_port() {
    python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randint(20000, 29999)
    try:
        t = socket.socket(); t.bind(("127.0.0.1", p))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", p))
        t.close(); u.close(); print(p); break
    except OSError:
        pass
PY
}
HTTP=$(free_port); DNS=$(free_port); SRV=$(free_port)
# shellcheck disable=SC2086
"$CAIRN" agent --dev --node bench-dev --http-port "$HTTP" --dns-port "$DNS" --serf-lan-port 0 \
    --server-port "$SRV" $AGENT_ARGS >"$WORK/agent.log" 2>&1 &
AGENT=$!
PIDS+=("$AGENT")
DEV=http://127.0.0.1:$HTTP
for _ in $(seq 300); do
    [[ $(curl -sf --max-time 2 "$DEV/v1/status/leader" 2>/dev/null) == \"*:* ]] && break
    kill -0 "$AGENT" 2>/dev/null || { cat "$WORK/agent.log" >&2; die "agent exited"; }
    sleep 0.2
done
curl -sf -X PUT --data '{"Name": "web", "Port": 8080}' "$DEV/v1/agent/service/register" >/dev/null ||
    die "service registration failed"
for _ in $(seq 300); do
    dig @127.0.0.1 -p "$DNS" +time=1 +tries=1 +short web.service.consul SRV 2>/dev/null | grep -q 8080 && break
    sleep 0.2
done
dig @127.0.0.1 -p "$DNS" +short web.service.consul SRV | grep -q 8080 || die "no SRV answer"
echo "web.service.consul SRV" >"$WORK/queries.txt"
perf_run() {
    dnsperf -s 127.0.0.1 -p "$DNS" -d "$WORK/queries.txt" -c "$DNS_CLIENTS" -T "$DNS_THREADS" \
        -q "$DNS_OUTSTANDING" -l "$1"
}
if ((WARMUP > 0)); then
    timeout $((WARMUP + 30)) dnsperf -s 127.0.0.1 -p "$DNS" -d "$WORK/queries.txt" \
        -c "$DNS_CLIENTS" -T "$DNS_THREADS" -q "$DNS_OUTSTANDING" -l "$WARMUP" >/dev/null 2>&1 || true
fi
cpu() { awk '{ print $14 + $15 }' "/proc/$AGENT/stat"; }
HZ=$(getconf CLK_TCK)
c0=$(cpu)
if ((PERF)); then
    perf record -F 499 -g -o "$WORK/perf.data" -p "$AGENT" -- sleep $((DURATION > 2 ? DURATION - 2 : 1)) >/dev/null 2>&1 &
    PERF_PID=$!
fi
# In a subshell, so that `times` gives dnsperf's own CPU time as its children's.
(
    perf_run "$DURATION" >"$WORK/dnsperf.txt" 2>&1 || echo "dnsperf exited with an error" >&2
    times >"$WORK/times.txt"
)
c1=$(cpu)
((PERF)) && { wait "$PERF_PID" || true; KEEP=1; }
cat "$WORK/dnsperf.txt"
completed=$(awk '/Queries completed:/ { print $3 }' "$WORK/dnsperf.txt")
awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="${completed:-0}" -v d="$DURATION" 'BEGIN {
    s = t / hz; printf "agent CPU: %.2f s over %d s (%.0f %% of one core), %.2f us per answer\n", s, d, 100 * s / d, (n > 0 ? 1e6 * s / n : 0) }'
# `times`' second line: the children's user and system time, as 0m1.234s.
awk -v n="${completed:-0}" -v d="$DURATION" 'NR == 2 {
    s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }
    printf "dnsperf CPU: %.2f s over %d s, %.2f us per answer\n", s, d, (n > 0 ? 1e6 * s / n : 0) }' "$WORK/times.txt"
echo "uptime: $(uptime)"
