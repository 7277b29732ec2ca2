#!/usr/bin/env bash
# Issue 6's catalog figures: three fresh servers on 127.0.6.1-3 (release build), then
# `loadgen catalog` registers NODES x SERVICES_PER_NODE instances, times how fast WATCHERS
# blocking watchers of one service see its health change, reads `service NAME --passing`
# with 64 connections, and reads the servers' RSS. Not a CI test.
#
#   benches/catalog_watch.sh [extra loadgen catalog flags...]
#   e.g. benches/catalog_watch.sh --nodes 10000 --services-per-node 10 --watchers 1000
#
# Writes catalog.hgrm, catalog-send.hgrm, catalog-query.hgrm and catalog.json into
# OUT (default target/catalog-watch).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/catalog-watch}
BASE=${BASE:-127.0.6}
mkdir -p "$OUT"
cargo build --release -q --bin cairn -p cairn -p loadgen
dirs=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for d in "${dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT
join="$BASE.1,$BASE.2,$BASE.3"
for i in 1 2 3; do
    d=$(mktemp -d /tmp/cairn-catalog-watch-s$i.XXXX)
    dirs+=("$d")
    ./target/release/cairn agent --server --node "s$i" --data-dir "$d" \
        --bind "$BASE.$i" --client "$BASE.$i" --bootstrap-expect 3 \
        --http-port -1 --dns-port -1 --retry-join "$join" >"$OUT/s$i.log" 2>&1 &
    pids+=($!)
done
# Wait (bounded) for a leader.
for _ in $(seq 1 100); do
    if CAIRN_RPC_ADDR=$BASE.1:8300 ./target/release/cairn operator raft list-peers 2>/dev/null |
        grep -q leader; then
        break
    fi
    sleep 0.2
done
uptime
./target/release/loadgen catalog --servers "$BASE.1:8300,$BASE.2:8300,$BASE.3:8300" \
    --pids "$(IFS=,; echo "${pids[*]}")" \
    --hgrm "$OUT/catalog.hgrm" --json "$OUT/catalog.json" "$@"
uptime
