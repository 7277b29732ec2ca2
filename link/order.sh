#!/usr/bin/env bash
# Regenerates link/client-agent.order, the functions the linker lays out first in the
# `cairn` binary (build.rs turns it into a linker script; why: ARCHITECTURE.md, "Client
# agents").
#
#   cargo build --release -p cairn && link/order.sh
#                            (needs valgrind and python3; curl and dig for the HTTP and
#                             DNS requests, skipped without them)
#
# The names must be those of the binary that ships: build it with `-p cairn` alone, as
# the README does (built together with loadgen, three crates get other features, and
# every symbol another hash).
#
# It runs, on loopback, a server and CLIENTS client agents of CAIRN (default
# target/release/cairn), plus one more client agent under valgrind's callgrind
# (--demangle=no), whose life it drives in three parts. The core of a client agent's
# life: start (HTTP API and DNS on), join, gossip, answer `cairn members` and KV reads and
# writes on its RPC port, see a member fail (kill -9), idle. Then what not every client
# agent is asked: HTTP requests (agent, KV, catalog, health, a service registered with a
# TTL and a TCP check, then deregistered) and DNS questions. Then leave on SIGTERM.
# Beside it, a second client agent under callgrind is started as benches/gossip_vs_serf.sh
# starts its clients (HTTP API and DNS off: `--http-port -1 --dns-port -1`, which parsing
# runs other code for) and lives through the same three parts; what it runs counts as
# every client agent's life too (without it, the benchmark's clients mapped a 256 KiB
# block of code for one 171-byte clap function that parses "-1").
# callgrind names every function of the binary that ran by its symbol; the functions of
# the first and last parts come first, then those only the second part ran, each group
# in address order. So the code every client agent runs sits
# together, and the HTTP, DNS and check code a bare agent never touches comes after it
# instead of between it. The pool's server (the one all others join; `--bootstrap-expect
# 1`) runs under callgrind as well, through the whole run, and what only it ran comes
# last: a server then maps its code from that block (3.2 MiB of text in a 16-member pool)
# instead of from most of the 9 MiB (7.0 MiB).
#
# The file names functions by their mangled symbols, which carry hashes of the compiler
# version and of each crate's version and features, and ThinLTO's `.llvm.N` suffixes,
# which change with the code of their codegen unit. build.rs falls back to the names
# without hashes, which also match other instantiations of the same generic functions
# (a client agent then maps about twice the code), and warns when the compiler,
# Cargo.lock or a manifest changed since the file was made. This script first prints how
# many of the current file's names the binary still has; regenerate when that falls.
#
# The pool is made as large as the benchmark's smallest (CLIENTS 40, so 43 members):
# some code runs only in larger pools (a stable sort of more than 20 members calls
# `driftsort_main`, which a pool of 6 never ran; every client agent of a 64-member pool
# then mapped a 64 KiB window of .text for it).
#
# Environment (defaults): CAIRN (target/release/cairn), BASE_PORT (27000; ports
# BASE_PORT..BASE_PORT+399, below the ephemeral range), CLIENTS (40, at most 90), IDLE_S
# (20), KEEP (1 keeps the work directory).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
BASE_PORT=${BASE_PORT:-27000}
IDLE_S=${IDLE_S:-20}
CLIENTS=${CLIENTS:-40}
KEEP=${KEEP:-0}
OUT=$ROOT/link/client-agent.order

die() { echo "link/order.sh: $*" >&2; exit 2; }
[[ -x $CAIRN ]] || die "no $CAIRN: cargo build --release -p cairn"
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    die "needs valgrind (apt-get install -y valgrind)"
command -v python3 >/dev/null || die "needs python3"
((BASE_PORT >= 1024 && BASE_PORT + 399 < 32768)) || die "BASE_PORT+399 must be below 32768"
((CLIENTS >= 3 && CLIENTS <= 90)) || die "CLIENTS must be 3 to 90"
CAIRN=$(readlink -f "$CAIRN")

WORK=$(mktemp -d -t cairn-order.XXXXXX)
PIDS=()
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP == 1 || $rc -ne 0 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

B=127.0.0.1
rpc() { echo $((BASE_PORT + $1)); }        # RPC port of agent i (0 = server)
gossip() { echo $((BASE_PORT + 100 + $1)); }
http() { echo $((BASE_PORT + 200 + $1)); }
dns() { echo $((BASE_PORT + 300 + $1)); }
# The profiled agent is index 99; the bare one (no HTTP API, no DNS) 98.
P=99
Q=98
MEMBERS=$((CLIENTS + 3))

# Symbols of the binary: address, size, name (functions only).
nm -S --defined-only "$CAIRN" | awk 'NF == 4 && $3 ~ /^[tTwW]$/' >"$WORK/nm.txt"
if [[ -f $OUT ]]; then
    python3 - "$OUT" "$WORK/nm.txt" <<'EOF'
import sys
listed = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
have = {l.split()[3] for l in open(sys.argv[2])}
found = sum(1 for n in listed if n in have)
print(f"current {sys.argv[1].split('/')[-1]}: {found} of {len(listed)} names are in this binary")
EOF
fi

start() { # i [extra args...]: a native agent
    local i=$1
    shift
    "$CAIRN" agent --node "c$i" --data-dir "$WORK/c$i" --bind $B --server-port "$(rpc "$i")" \
        --serf-lan-port "$(gossip "$i")" --http-port -1 --dns-port -1 --spin-before-park-us 0 \
        "$@" >"$WORK/c$i.log" 2>&1 &
    PIDS+=($!)
}
# The server runs under callgrind too: what it runs is laid out after the client agents'
# code, so a server maps its code from one block instead of most of the text.
valgrind --tool=callgrind --demangle=no --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$WORK/callgrind.server.out" \
    "$CAIRN" agent --node c0 --data-dir "$WORK/c0" --bind $B --server-port "$(rpc 0)" \
    --serf-lan-port "$(gossip 0)" --http-port -1 --dns-port -1 --spin-before-park-us 0 \
    --server --bootstrap-expect 1 >"$WORK/c0.log" 2>&1 &
VS=$!
PIDS+=($VS)
for ((t = 0; t < 120; t++)); do
    timeout 30 "$CAIRN" operator raft list-peers --rpc-addr "$B:$(rpc 0)" >/dev/null 2>&1 && break
    kill -0 $VS 2>/dev/null || die "the profiled server exited: $(tail -n 3 "$WORK/c0.log")"
    sleep 1
done
for ((i = 1; i <= CLIENTS; i++)); do start "$i" --retry-join "$B:$(gossip 0)"; done
valgrind --tool=callgrind --demangle=no --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$WORK/callgrind.out" \
    "$CAIRN" agent --node "c$P" --data-dir "$WORK/c$P" --bind $B --server-port "$(rpc $P)" \
    --serf-lan-port "$(gossip $P)" --http-port "$(http $P)" --dns-port "$(dns $P)" \
    --client $B --spin-before-park-us 0 --retry-join "$B:$(gossip 0)" \
    >"$WORK/c$P.log" 2>&1 &
VG=$!
PIDS+=($VG)
valgrind --tool=callgrind --demangle=no --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$WORK/callgrind.bare.out" \
    "$CAIRN" agent --node "c$Q" --data-dir "$WORK/c$Q" --bind $B --server-port "$(rpc $Q)" \
    --serf-lan-port "$(gossip $Q)" --http-port -1 --dns-port -1 --spin-before-park-us 0 \
    --retry-join "$B:$(gossip 0)" >"$WORK/c$Q.log" 2>&1 &
VG2=$!
PIDS+=($VG2)

cli() { timeout 30 "$CAIRN" "$@" --rpc-addr "$B:$(rpc $P)" --timeout-ms 20000 >/dev/null 2>&1 || true; }
echo "waiting for the profiled agent to see all $MEMBERS members (at most 180 s)" >&2
for ((t = 0; t < 180; t++)); do
    n=$(timeout 30 "$CAIRN" members --rpc-addr "$B:$(rpc $P)" --format json --timeout-ms 20000 2>/dev/null |
        grep -o '"Status": *"alive"' | wc -l) || n=0
    ((n >= MEMBERS)) && break
    kill -0 $VG 2>/dev/null || die "the profiled agent exited: $(tail -n 3 "$WORK/c$P.log")"
    kill -0 $VG2 2>/dev/null || die "the bare profiled agent exited: $(tail -n 3 "$WORK/c$Q.log")"
    sleep 1
done
((n >= MEMBERS)) || die "the profiled agent saw $n of $MEMBERS members alive after 180 s"

# Asks callgrind for a dump of what ran since the last one: callgrind.out.N.
dump() { # N
    callgrind_control -d $VG >/dev/null 2>&1 || die "callgrind_control -d failed"
    for ((t = 0; t < 600; t++)); do
        [[ -s $WORK/callgrind.out.$1 ]] && return 0
        sleep 0.1
    done
    die "callgrind wrote no dump $1 within 60 s"
}

echo "part 1: RPC requests, a member fails, idle ${IDLE_S} s" >&2
for r in 1 2 3; do
    cli members
    cli members --format json
    cli kv put "order/k$r" "v$r"
    cli kv get "order/k$r"
    cli kv list order/
done
kill -9 "${PIDS[3]}"
sleep 10
cli members
sleep "$IDLE_S"
dump 1

echo "part 2: HTTP, checks, DNS" >&2
if command -v curl >/dev/null; then
    H="http://$B:$(http $P)"
    c() { curl -s -m 20 -o /dev/null "$@" || true; }
    for path in /v1/agent/self /v1/agent/members /v1/status/leader /v1/status/peers \
        /v1/catalog/nodes /v1/catalog/services /v1/health/state/any /v1/kv/order/k1 \
        "/v1/kv/order/?recurse=true" /v1/agent/services /v1/agent/checks; do
        c "$H$path"
    done
    c -X PUT --data-binary v "$H/v1/kv/order/http"
    c -X PUT --data-binary "{\"Name\": \"web\", \"ID\": \"web1\", \"Port\": 80, \"Checks\": [
        {\"CheckID\": \"web-ttl\", \"TTL\": \"30s\"},
        {\"CheckID\": \"web-tcp\", \"TCP\": \"$B:$(rpc $P)\", \"Interval\": \"1s\", \"Timeout\": \"1s\"}]}" \
        "$H/v1/agent/service/register"
    c -X PUT "$H/v1/agent/check/pass/web-ttl?note=up"
    sleep 3
    c "$H/v1/health/service/web"
    c "$H/v1/catalog/service/web"
    c -X PUT "$H/v1/agent/service/deregister/web1"
    c -X DELETE "$H/v1/kv/order/http"
fi
if command -v dig >/dev/null; then
    for q in "c0.node.consul A" "web.service.consul SRV" "consul.service.consul A" "nope.node.consul A"; do
        # shellcheck disable=SC2086
        dig +time=10 +tries=1 @$B -p "$(dns $P)" $q >/dev/null 2>&1 || true
    done
fi
dump 2

echo "part 3: leave (SIGTERM; callgrind writes the rest of the profile)" >&2
kill -TERM $VG $VG2
for ((t = 0; t < 600; t++)); do
    kill -0 $VG 2>/dev/null || kill -0 $VG2 2>/dev/null || break
    sleep 0.1
done
wait $VG $VG2 2>/dev/null || true
kill -TERM $VS
for ((t = 0; t < 600; t++)); do
    kill -0 $VS 2>/dev/null || break
    sleep 0.1
done
wait $VS 2>/dev/null || true
[[ -s $WORK/callgrind.out ]] || die "callgrind wrote no profile (see $WORK/c$P.log)"
[[ -s $WORK/callgrind.bare.out ]] || die "callgrind wrote no profile (see $WORK/c$Q.log)"
[[ -s $WORK/callgrind.server.out ]] || die "callgrind wrote no profile (see $WORK/c0.log)"

(cd "$ROOT" && rustc -vV) >"$WORK/rustc-vV.txt"
python3 - "$WORK" "$WORK/nm.txt" "$CAIRN" "$OUT" "$ROOT" <<'EOF'
import sys
work, nm, binary, out, root = sys.argv[1:6]
syms = sorted((int(a, 16), int(s, 16), n) for a, s, _, n in (l.split() for l in open(nm)))
at = {n: (a, s) for a, s, n in syms}

def ran(profile):
    """Start address -> size of the binary's functions that ran in `profile`: callgrind
    names each function by its symbol (--demangle=no), whose address nm gives."""
    ob = fn = None
    hit = {}
    for line in open(profile):
        if line.startswith("ob="):
            ob = line[3:].strip()
        elif line.startswith("fn="):
            fn = line[3:].strip()
        # Code the layout moved out of .text is reported under the object "???".
        elif line[:1] in "0123456789+-*" and ob in (binary, "???") and fn in at:
            hit[at[fn][0]] = at[fn][1]
    return hit

def path(name):
    """A legacy-mangled name's path segments without its hash (None for other names)."""
    if not name.startswith("_ZN"):
        return None
    segs, i = [], 3
    while i < len(name) and name[i].isdigit():
        j = i
        while name[j].isdigit():
            j += 1
        n = int(name[i:j])
        segs.append(name[j:j + n])
        i = j + n
    if segs and segs[-1].startswith("h") and len(segs[-1]) == 17:
        segs.pop()
    return tuple(segs)

by_path = {}
for a, s, n in syms:
    p = path(n)
    if p:
        by_path.setdefault(p, []).append((a, s))

def with_cpu_variants(hit):
    """`hit` plus the siblings of what ran that are picked by CPU features valgrind does
    not emulate: crc32fast's `calculate` ran under callgrind, but on a CPU with AVX-512
    `calculate_avx512` runs instead (and a client agent mapped a 64 KiB window of .text
    for it alone)."""
    out = dict(hit)
    for a, s, n in syms:
        p = path(n)
        if a in hit and p:
            for suffix in ("_avx2", "_avx512"):
                for va, vs in by_path.get(p[:-1] + (p[-1] + suffix,), []):
                    out[va] = vs
    return out

part1, part2, part3 = (ran(f"{work}/callgrind.out{s}") for s in (".1", ".2", ""))
first = with_cpu_variants(part1 | part3 | ran(f"{work}/callgrind.bare.out"))
then = {a: s for a, s in with_cpu_variants(part2).items() if a not in first}
server = {a: s for a, s in with_cpu_variants(ran(f"{work}/callgrind.server.out")).items()
          if a not in first and a not in then}
if len(first) < 500:
    sys.exit(f"link/order.sh: only {len(first)} functions found in part 1; the profile looks "
             f"cut short (see {work}); the file is left as it was")
# What the symbols' hashes come from, as build.rs fingerprints it (FNV-1a, 64-bit).
h = 0xcbf29ce484222325
for data in [open(f"{work}/rustc-vV.txt", "rb").read()] + [
        open(f"{root}/{f}", "rb").read()
        for f in ("Cargo.lock", "Cargo.toml", "net/Cargo.toml", "storage/Cargo.toml")]:
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
with open(out, "w") as f:
    f.write("# Functions a client agent runs, laid out first by the linker (build.rs).\n")
    f.write("# Generated by link/order.sh; do not edit by hand.\n")
    f.write(f"# inputs: {h:016x}\n")
    for group in (first, then, server):
        for a, _, n in syms:
            if a in group:
                f.write(n + "\n")
kib = lambda g: sum(g.values()) / 1024
print(f"{len(first)} functions ({kib(first):.0f} KiB) in every client agent's life, then "
      f"{len(then)} ({kib(then):.0f} KiB) of HTTP, DNS and checks, then {len(server)} "
      f"({kib(server):.0f} KiB) only the server ran -> {out}")
EOF
