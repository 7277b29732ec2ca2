#!/usr/bin/env bash
# Cairn's HTTP API and DNS interface beside nginx and etcd's HTTP gateway (issue 7, item 5).
#
#   benches/http_vs_nginx_etcd.sh
#
# One run, one system at a time, everything on loopback, every process started here
# stopped here. With `wrk` (CONNS connections, WRK_THREADS threads, --latency):
#   1. nginx serving a 256-byte file (NGINX_WORKERS worker processes);
#   2. one `cairn agent --dev`: GET /v1/kv/<key>?stale (256-byte value; the answer is
#      Consul's JSON with the value in base64), and the same with &raw (the 256 bytes
#      alone, what nginx sends); then SRV answers/s from its DNS interface with `dnsperf`
#      for a service registered through PUT /v1/agent/service/register;
#   3. one etcd member: POST /v3/kv/range, serializable (etcd's stale read);
#   4. three Cairn servers on 127.0.0.11-13: PUT /v1/kv/<key> (256-byte body) to the leader;
#   5. three etcd members on 127.0.0.11-13: POST /v3/kv/put (256-byte value) to the leader.
# Both clusters keep their data in the same temporary directory (same disk), and both
# fsync every acknowledged write on a quorum.
#
# Installs wrk, nginx-light, etcd-server and dnsperf with apt-get when they are missing.
# Prints one Markdown table (ops/s, p50, p99, errors) and the ratios against the goals.
#
# Environment (defaults): CAIRN (target/release/cairn), DURATION (10 s per run), WARMUP
# (2 s of wrk before each measured run, not reported), CONNS (64), WRK_THREADS (2),
# NGINX_WORKERS (auto: one per core, as nginx is usually run), DNS_CLIENTS (64 UDP
# sockets), DNS_OUTSTANDING (64 queries in flight), VALUE_SIZE (256), START_MAX_S (60),
# KEEP (1 keeps the work directory with every log), CAIRN_CORES (the dev agent's
# --cores: 1, its default; NGINX_WORKERS=1 CAIRN_CORES=1 or NGINX_WORKERS=2 CAIRN_CORES=2
# compare the two on the same cores).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
CAIRN_CORES=${CAIRN_CORES:-1}
DNS_CLIENTS=${DNS_CLIENTS:-64}
DNS_OUTSTANDING=${DNS_OUTSTANDING:-64}
VALUE_SIZE=${VALUE_SIZE:-256}
START_MAX_S=${START_MAX_S:-60}
KEEP=${KEEP:-0}

die() { echo "http_vs_nginx_etcd: $*" >&2; exit 2; }
[[ -x $CAIRN ]] || die "no $CAIRN: cargo build --release -p cairn"
for v in DURATION WARMUP CONNS WRK_THREADS DNS_CLIENTS DNS_OUTSTANDING VALUE_SIZE START_MAX_S CAIRN_CORES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number"
done
((DURATION >= 1 && DURATION <= 600)) || die "DURATION must be 1..600"
((WARMUP <= 60)) || die "WARMUP must be 0..60"
((CONNS >= 1 && CONNS <= 10000 && WRK_THREADS >= 1 && WRK_THREADS <= CONNS)) || die "bad CONNS/WRK_THREADS"
((VALUE_SIZE >= 1 && VALUE_SIZE <= 65536)) || die "VALUE_SIZE must be 1..65536"

# Debian packages: command -> package.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v etcd >/dev/null || need+=(etcd-server)
command -v dnsperf >/dev/null || need+=(dnsperf)
for c in curl python3 base64; do command -v "$c" >/dev/null || die "needs $c"; done
if ((${#need[@]} > 0)); then
    ((EUID == 0)) || die "missing ${need[*]}: apt-get install -y ${need[*]} (as root)"
    echo "== installing ${need[*]}" >&2
    timeout 120 apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${need[@]}" >&2 ||
        die "apt-get install ${need[*]} failed"
fi
# The Debian nginx package starts a system nginx on port 80; it is not ours, leave it.

WORK=$(mktemp -d -t http-vs-nginx-etcd.XXXXXX)
chmod 755 "$WORK" # nginx's workers drop to an unprivileged user and read the file below
PIDS=()

stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    local j
    for j in $(jobs -p); do kill -9 "$j" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP == 1 || $rc -ne 0 ]]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port free for TCP and UDP on IP (the kernel picks it; nothing holds it afterwards, so
# another program could take it first: start-up would then fail and say so).
free_port() { # ip
    python3 - "$1" <<'EOF'
import socket, sys
ip = sys.argv[1]
for _ in range(100):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind((ip, 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind((ip, port))
    except OSError:
        continue
    finally:
        u.close()
        t.close()
    print(port)
    sys.exit(0)
sys.exit(1)
EOF
}

# Polls CMD (a shell function or command) every 0.2 s until it succeeds, at most
# START_MAX_S; dies with the tail of LOG when it does not.
wait_for() { # what log cmd...
    local what=$1 log=$2 i
    shift 2
    for ((i = 0; i < START_MAX_S * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        local p
        for p in "${PIDS[@]}"; do
            kill -0 "$p" 2>/dev/null || { tail -n 20 "$log" >&2; die "$what exited during start-up"; }
        done
        sleep 0.2
    done
    tail -n 20 "$log" >&2
    die "$what not ready after ${START_MAX_S}s"
}

VALUE=$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' 'v')
VALUE_B64=$(printf %s "$VALUE" | base64 -w0)
KEY=bench/key
KEY_B64=$(printf %s "$KEY" | base64 -w0)

ROWS=()
declare -A OPS

# wrk's latency with its unit -> milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }'; }

# Runs wrk (warm-up, then the measured run) and adds a row. ARGS are wrk's.
run_wrk() { # id label what-it-runs-on args...
    local id=$1 label=$2 on=$3 out="$WORK/wrk-$1.txt"
    shift 3
    echo "== $label: wrk $*" >&2
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 30)) wrk -t"$WRK_THREADS" -c"$CONNS" -d"${WARMUP}s" "$@" >/dev/null 2>&1 || true
    fi
    timeout $((DURATION + 60)) wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$@" >"$out" 2>&1 ||
        echo "   wrk exited with an error (see below)" >&2
    sed 's/^/   /' "$out" >&2
    local rps p50 p99 non2xx sockerr
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    sockerr=$(awk -F'Socket errors: ' 'NF > 1 { print $2 }' "$out")
    local errs="${non2xx:-0} non-2xx"
    [[ -z $sockerr ]] || errs+="; socket errors: $sockerr"
    OPS[$id]=${rps:-0}
    ROWS+=("$label|$on|$(printf "%'d" "${rps:-0}")|$p50|$p99|$errs")
}

curl_ok() { curl -sf -o /dev/null --max-time 2 "$@"; }

# ---------------------------------------------------------------------------- nginx
mkdir -p "$WORK/nginx/www" "$WORK/nginx/tmp"
printf %s "$VALUE" >"$WORK/nginx/www/value"
NGINX_PORT=$(free_port 127.0.0.1)
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/nginx/www;
    }
}
EOF
echo "== nginx on 127.0.0.1:$NGINX_PORT ($NGINX_WORKERS workers)" >&2
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx/out.log" 2>&1 &
PIDS+=($!)
wait_for nginx "$WORK/nginx/error.log" curl_ok "http://127.0.0.1:$NGINX_PORT/value"
[[ $(curl -s "http://127.0.0.1:$NGINX_PORT/value" | wc -c) == "$VALUE_SIZE" ]] || die "nginx serves the wrong file"
run_wrk nginx "GET a ${VALUE_SIZE}-byte file" "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), $NGINX_WORKERS workers" \
    "http://127.0.0.1:$NGINX_PORT/value"
stop_all

# ---------------------------------------------------------------------------- Cairn dev agent
DEV_HTTP=$(free_port 127.0.0.1)
DEV_DNS=$(free_port 127.0.0.1)
DEV_SERVER=$(free_port 127.0.0.1)
echo "== cairn agent --dev --cores $CAIRN_CORES: HTTP $DEV_HTTP, DNS $DEV_DNS, server $DEV_SERVER" >&2
"$CAIRN" agent --dev --node bench-dev --cores "$CAIRN_CORES" --http-port "$DEV_HTTP" --dns-port "$DEV_DNS" \
    --serf-lan-port 0 --server-port "$DEV_SERVER" >"$WORK/cairn-dev.log" 2>&1 &
PIDS+=($!)
DEV=http://127.0.0.1:$DEV_HTTP
dev_ready() { [[ $(curl -sf --max-time 2 "$DEV/v1/status/leader") == \"*:* ]]; }
wait_for "cairn agent --dev" "$WORK/cairn-dev.log" dev_ready
[[ $(curl -sf -X PUT --data-binary "$VALUE" "$DEV/v1/kv/$KEY") == true ]] || die "PUT to the dev agent failed"
[[ $(curl -sf "$DEV/v1/kv/$KEY?stale&raw") == "$VALUE" ]] || die "the dev agent does not return the value"
run_wrk cairn_get "GET /v1/kv/<key>?stale (JSON, base64)" "cairn agent --dev --cores $CAIRN_CORES" "$DEV/v1/kv/$KEY?stale"
run_wrk cairn_raw "GET /v1/kv/<key>?stale&raw" "cairn agent --dev --cores $CAIRN_CORES" "$DEV/v1/kv/$KEY?stale&raw"

# DNS: SRV for one registered service (no checks, so it passes; the node's serfHealth too).
curl -sf -X PUT --data '{"Name": "web", "Port": 8080}' "$DEV/v1/agent/service/register" >/dev/null ||
    die "service registration failed"
srv_ready() {
    local a
    a=$(python3 - "$DEV_DNS" <<'EOF'
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for label in "web.service.consul".split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\0" + struct.pack(">HH", 33, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
r = s.recv(4096)
print(struct.unpack(">HHHHHH", r[:12])[3])  # answer count
EOF
    ) || return 1
    ((a >= 1))
}
wait_for "SRV answer for web.service.consul" "$WORK/cairn-dev.log" srv_ready
echo "web.service.consul SRV" >"$WORK/dns-queries.txt"
echo "== DNS: dnsperf -c $DNS_CLIENTS -q $DNS_OUTSTANDING -l $DURATION (web.service.consul SRV)" >&2
if ((WARMUP > 0)); then
    timeout $((WARMUP + 30)) dnsperf -s 127.0.0.1 -p "$DEV_DNS" -d "$WORK/dns-queries.txt" \
        -c "$DNS_CLIENTS" -T "$WRK_THREADS" -q "$DNS_OUTSTANDING" -l "$WARMUP" >/dev/null 2>&1 || true
fi
timeout $((DURATION + 60)) dnsperf -s 127.0.0.1 -p "$DEV_DNS" -d "$WORK/dns-queries.txt" \
    -c "$DNS_CLIENTS" -T "$WRK_THREADS" -q "$DNS_OUTSTANDING" -l "$DURATION" >"$WORK/dnsperf.txt" 2>&1 ||
    echo "   dnsperf exited with an error" >&2
sed 's/^/   /' "$WORK/dnsperf.txt" >&2
DNS_QPS=$(awk '/Queries per second:/ { printf "%.0f", $4 }' "$WORK/dnsperf.txt")
DNS_AVG=$(awk '/Average Latency/ { printf "%.2f", $4 * 1000 }' "$WORK/dnsperf.txt")
DNS_MAX=$(awk '/Average Latency/ { gsub(/[(),]/, " "); printf "%.2f", $(NF) * 1000 }' "$WORK/dnsperf.txt")
DNS_LOST=$(awk '/Queries lost:/ { print $3 }' "$WORK/dnsperf.txt")
DNS_CODES=$(awk '/Response codes:/ { sub(/^ *Response codes: */, ""); print }' "$WORK/dnsperf.txt")
OPS[dns]=${DNS_QPS:-0}
ROWS+=("DNS SRV web.service.consul (UDP, dnsperf)|cairn agent --dev|$(printf "%'d" "${DNS_QPS:-0}")|mean $DNS_AVG|max $DNS_MAX|${DNS_LOST:-?} lost; $DNS_CODES")
stop_all

# ---------------------------------------------------------------------------- etcd, 1 member
ETCD_VER=$(etcd --version 2>/dev/null | awk '/etcd Version/ { print $3 }')
start_etcd() { # members
    local n=$1 i cluster="" ip
    ETCD_CLIENTS=()
    local peers=()
    for ((i = 1; i <= n; i++)); do
        ip=127.0.0.$((10 + i))
        ((n > 1)) || ip=127.0.0.1
        ETCD_CLIENTS+=("http://$ip:$(free_port "$ip")")
        peers+=("http://$ip:$(free_port "$ip")")
        cluster+="${cluster:+,}e$i=${peers[$((i - 1))]}"
    done
    for ((i = 1; i <= n; i++)); do
        etcd --name "e$i" --data-dir "$WORK/etcd$n-e$i" \
            --listen-client-urls "${ETCD_CLIENTS[$((i - 1))]}" \
            --advertise-client-urls "${ETCD_CLIENTS[$((i - 1))]}" \
            --listen-peer-urls "${peers[$((i - 1))]}" \
            --initial-advertise-peer-urls "${peers[$((i - 1))]}" \
            --initial-cluster "$cluster" --initial-cluster-token "bench$n" \
            --initial-cluster-state new --logger zap --log-level warn \
            >"$WORK/etcd$n-e$i.log" 2>&1 &
        PIDS+=($!)
    done
}
etcd_put_ok() { # url
    curl -sf --max-time 2 -X POST -d "{\"key\":\"$KEY_B64\",\"value\":\"$VALUE_B64\"}" "$1/v3/kv/put" | grep -q header
}
# The client URL of the etcd leader: ETCD_LEADER.
etcd_leader() {
    local u s
    for u in "${ETCD_CLIENTS[@]}"; do
        s=$(curl -sf --max-time 2 -X POST -d '{}' "$u/v3/maintenance/status") || continue
        if [[ $(jq -r '.leader == .header.member_id' <<<"$s") == true ]]; then ETCD_LEADER=$u; return 0; fi
    done
    return 1
}

echo "== etcd $ETCD_VER, 1 member" >&2
start_etcd 1
wait_for "etcd" "$WORK/etcd1-e1.log" etcd_put_ok "${ETCD_CLIENTS[0]}"
curl -sf -X POST -d "{\"key\":\"$KEY_B64\",\"serializable\":true}" "${ETCD_CLIENTS[0]}/v3/kv/range" |
    grep -q "$VALUE_B64" || die "etcd does not return the value"
cat >"$WORK/etcd-range.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"$KEY_B64","serializable":true}'
EOF
run_wrk etcd_range "POST /v3/kv/range serializable" "etcd $ETCD_VER, 1 member" \
    -s "$WORK/etcd-range.lua" "${ETCD_CLIENTS[0]}/v3/kv/range"
stop_all

# ---------------------------------------------------------------------------- Cairn, 3 servers
echo "== cairn: 3 servers on 127.0.0.11-13" >&2
declare -a C_HTTP C_SERVER C_SERF
join=""
for i in 1 2 3; do
    ip=127.0.0.1$i
    C_HTTP[i]=$(free_port "$ip")
    C_SERVER[i]=$(free_port "$ip")
    C_SERF[i]=$(free_port "$ip")
    join+="${join:+,}$ip:${C_SERF[i]}"
done
for i in 1 2 3; do
    ip=127.0.0.1$i
    "$CAIRN" agent --server --node "s$i" --data-dir "$WORK/cairn-s$i" --bind "$ip" --client "$ip" \
        --bootstrap-expect 3 --retry-join "$join" --server-port "${C_SERVER[i]}" \
        --serf-lan-port "${C_SERF[i]}" --http-port "${C_HTTP[i]}" --dns-port -1 \
        >"$WORK/cairn-s$i.log" 2>&1 &
    PIDS+=($!)
done
# The leader's index (1..3) from /v1/status/leader: C_LEADER.
cairn_leader() {
    local l i
    l=$(curl -sf --max-time 2 "http://127.0.0.11:${C_HTTP[1]}/v1/status/leader") || return 1
    for i in 1 2 3; do
        if [[ $l == "\"127.0.0.1$i:${C_SERVER[i]}\"" ]]; then C_LEADER=$i; return 0; fi
    done
    return 1
}
cairn_put_ok() {
    cairn_leader && [[ $(curl -sf --max-time 2 -X PUT --data-binary "$VALUE" \
        "http://127.0.0.1$C_LEADER:${C_HTTP[C_LEADER]}/v1/kv/$KEY") == true ]]
}
wait_for "3 cairn servers" "$WORK/cairn-s1.log" cairn_put_ok
cairn_leader
cat >"$WORK/put.lua" <<EOF
wrk.method = "PUT"
wrk.body = string.rep("v", $VALUE_SIZE)
EOF
run_wrk cairn_put "PUT /v1/kv/<key> (${VALUE_SIZE} B), to the leader" "cairn, 3 servers" \
    -s "$WORK/put.lua" "http://127.0.0.1$C_LEADER:${C_HTTP[C_LEADER]}/v1/kv/$KEY"
stop_all

# ---------------------------------------------------------------------------- etcd, 3 members
echo "== etcd $ETCD_VER, 3 members on 127.0.0.11-13" >&2
start_etcd 3
etcd_ready() { etcd_leader && etcd_put_ok "$ETCD_LEADER"; }
wait_for "3 etcd members" "$WORK/etcd3-e1.log" etcd_ready
etcd_leader
cat >"$WORK/etcd-put.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"key":"$KEY_B64","value":"$VALUE_B64"}'
EOF
run_wrk etcd_put "POST /v3/kv/put (${VALUE_SIZE} B), to the leader" "etcd $ETCD_VER, 3 members" \
    -s "$WORK/etcd-put.lua" "$ETCD_LEADER/v3/kv/put"
stop_all

# ---------------------------------------------------------------------------- report
ratio() { awk -v a="${OPS[$1]:-0}" -v b="${OPS[$2]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "Cairn's HTTP API and DNS beside nginx and etcd: $CONNS connections (wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency, after ${WARMUP}s of warm-up), ${VALUE_SIZE}-byte values"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2); dnsperf -c $DNS_CLIENTS -q $DNS_OUTSTANDING -T $WRK_THREADS"
echo
echo "| what | on | ops/s | p50 ms | p99 ms | errors |"
echo "|---|---|---:|---:|---:|---|"
for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
echo
echo "stale GET / nginx = $(ratio cairn_get nginx)   (goal >= 0.8; with &raw: $(ratio cairn_raw nginx))"
echo "stale GET / etcd serializable range = $(ratio cairn_get etcd_range)"
echo "PUT on 3 servers / etcd put on 3 members = $(ratio cairn_put etcd_put)   (goal >= 10)"
echo "DNS SRV answers/s = ${OPS[dns]}   (goal >= 100000)"
