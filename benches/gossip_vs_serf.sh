#!/usr/bin/env bash
# Real-process failure-detection comparison, Cairn vs Serf (issue 4, item 8).
#
#   benches/gossip_vs_serf.sh [N ...]          (default: 64 128)
#
# For each N, and for each system (Cairn, then Serf), this starts N agents on loopback
# (Cairn: one server with --bootstrap-expect 1 and N-1 client agents; Serf: N `serf agent`
# processes; everyone --retry-joins the first agent's gossip port), waits until the first
# agent lists N alive and then until every agent does, records the mean RSS per agent
# (VmRSS; the goal is judged on it; for Cairn also the server's and the client agents'
# mean) with the mean PSS and USS (Private_Clean + Private_Dirty, from smaps_rollup)
# beside it, kill -9s one agent (a client, index N/2), and polls the member list of every
# live agent that has not yet marked it `failed` (`cairn members --format json` /
# `serf members -format json`) every POLL_MS until all have, for at most DETECT_MAX_S.
#
# The time reported is from the kill until the last agent was seen marking the member
# failed: an upper bound (the end of the first poll of that agent that showed `failed`).
# The lower bound (the start of that agent's last poll that did not) is printed beside it,
# so the poll resolution is visible. Polling forks two processes per query (the CLI and,
# rarely, jq); with N agents on a 2-core box that is real CPU taken from the agents: the
# poll round time and the CPU busy share while polling are printed with each row.
#
# Environment (defaults): CAIRN (target/release/cairn), SERF (serf), SYSTEMS ("cairn serf"),
# BIND (127.0.0.1, must be loopback), BASE_PORT (20000; ports BASE_PORT+k*1000+i, k=0..3,
# all below 32768 because the ephemeral range starts there), POLL_MS (200), PAR (2 queries
# at a time), DETECT_MAX_S (60), START_MAX_S (180), CONVERGE_MAX_S (60), SETTLE_S (5),
# KEEP (1 keeps the work directory with every agent's log).
#
# Everything started here is killed (SIGKILL) on exit, on error and on Ctrl-C.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
SERF=${SERF:-serf}
SYSTEMS=${SYSTEMS:-"cairn serf"}
BIND=${BIND:-127.0.0.1}
BASE_PORT=${BASE_PORT:-20000}
POLL_MS=${POLL_MS:-200}
PAR=${PAR:-2}
DETECT_MAX_S=${DETECT_MAX_S:-60}
START_MAX_S=${START_MAX_S:-180}
CONVERGE_MAX_S=${CONVERGE_MAX_S:-60}
SETTLE_S=${SETTLE_S:-5}
KEEP=${KEEP:-0}
QUERY_TIMEOUT_S=5

if [[ $# -gt 0 ]]; then SIZES=("$@"); else SIZES=(64 128); fi

die() { echo "gossip_vs_serf: $*" >&2; exit 2; }
[[ $BIND == 127.* ]] || die "BIND must be a loopback address (got $BIND)"
for n in "${SIZES[@]}"; do
    [[ $n =~ ^[0-9]+$ ]] && ((n >= 3 && n <= 1000)) || die "N must be 3..1000 (got $n)"
done
((BASE_PORT >= 1024 && BASE_PORT + 3999 < 32768)) || die "BASE_PORT+3999 must be below 32768"
for s in $SYSTEMS; do
    case $s in
    cairn) [[ -x $CAIRN ]] || die "no $CAIRN: cargo build --release -p cairn" ;;
    serf) command -v "$SERF" >/dev/null || die "no serf: apt-get install -y serf" ;;
    *) die "unknown system $s" ;;
    esac
done
command -v jq >/dev/null || die "needs jq"

WORK=$(mktemp -d -t gossip-vs-serf.XXXXXX)
PIDS=()

stop_agents() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_agents
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

# Ports: k=0 Cairn server RPC, 1 Cairn gossip, 2 Serf gossip, 3 Serf RPC.
port() { echo $((BASE_PORT + $1 * 1000 + $2)); }
now_us() { local t=$EPOCHREALTIME; NOW=${t/./}; }
fmt_s() { printf '%d.%02d' $(($1 / 1000000)) $((($1 % 1000000) / 10000)); }

start_agent() { # system dir i
    local sys=$1 dir=$2 i=$3
    case $sys in
    cairn)
        local args=(agent --node "n$i" --data-dir "$dir/n$i" --bind "$BIND"
            --server-port "$(port 0 "$i")" --serf-lan-port "$(port 1 "$i")"
            --http-port -1 --dns-port -1 --spin-before-park-us 0)
        if ((i == 0)); then
            args+=(--server --bootstrap-expect 1)
        else
            args+=(--retry-join "$BIND:$(port 1 0)")
        fi
        "$CAIRN" "${args[@]}" >"$dir/n$i.log" 2>&1 &
        ;;
    serf)
        local args=(agent -node "n$i" -bind "$BIND:$(port 2 "$i")"
            -rpc-addr "$BIND:$(port 3 "$i")" -log-level warn)
        if ((i > 0)); then args+=(-retry-join "$BIND:$(port 2 0)" -retry-interval 1s); fi
        "$SERF" "${args[@]}" >"$dir/n$i.log" 2>&1 &
        ;;
    esac
    PIDS+=($!)
}

# One member list, JSON, in QOUT (empty on error).
query() { # system i
    QOUT=""
    case $1 in
    cairn) QOUT=$(timeout "$QUERY_TIMEOUT_S" "$CAIRN" members --rpc-addr "$BIND:$(port 0 "$2")" \
        --format json --timeout-ms $((QUERY_TIMEOUT_S * 1000 - 500)) 2>/dev/null) || QOUT="" ;;
    serf) QOUT=$(timeout "$QUERY_TIMEOUT_S" "$SERF" members -rpc-addr "$BIND:$(port 3 "$2")" \
        -format json 2>/dev/null) || QOUT="" ;;
    esac
}
# The victim's status from a member list (no fork on the usual path): VST.
victim_status() { # system name
    VST=error
    [[ -n $QOUT ]] || return 0
    # "Name": "nK", then anything inside that member's object (nested {} allowed) up to
    # its "Status"; the real JSON parser (jq, one more fork) only when this does not match.
    local n=Name st=Status
    [[ $1 == serf ]] && n=name st=status
    local re="\"$n\": *\"$2\",([^{}]|\{[^{}]*\})*\"$st\": *\"([a-z]+)\""
    if [[ $QOUT =~ $re ]]; then VST=${BASH_REMATCH[2]}; return 0; fi
    local f='.[]|select(.Name==$n)|.Status'
    [[ $1 == serf ]] && f='(.members // [])[]|select(.name==$n)|.status'
    VST=$(jq -r --arg n "$2" "[$f][0] // \"absent\"" <<<"$QOUT" 2>/dev/null) || VST=error
}
alive_count() { # system -> ALIVE (-1 on error)
    ALIVE=-1
    [[ -n $QOUT ]] || return 0
    local f='[.[]|select(.Status=="alive")]|length'
    [[ $1 == serf ]] && f='[(.members // [])[]|select(.status=="alive")]|length'
    ALIVE=$(jq -r "$f" <<<"$QOUT" 2>/dev/null) || ALIVE=-1
}

probe_job() { # system i victim outfile
    local s=$EPOCHREALTIME e
    query "$1" "$2"
    e=$EPOCHREALTIME
    victim_status "$1" "$3"
    echo "$2 ${s/./} ${e/./} $VST" >>"$4"
}
alive_job() { # system i outfile
    query "$1" "$2"
    alive_count "$1"
    echo "$2 $ALIVE" >>"$3"
}
# Runs JOB for every index, PAR at a time.
run_pool() { # job-function fixed-args... -- indices...
    local fn=$1 fixed=() running=() idx done_pid keep p
    shift
    while [[ $1 != -- ]]; do fixed+=("$1"); shift; done
    shift
    for idx in "$@"; do
        while ((${#running[@]} >= PAR)); do
            done_pid=""
            wait -n -p done_pid "${running[@]}" || true
            keep=()
            for p in "${running[@]}"; do [[ $p == "$done_pid" ]] || keep+=("$p"); done
            running=("${keep[@]}")
        done
        "$fn" "$idx" "${fixed[@]}" &
        running+=($!)
    done
    for p in "${running[@]}"; do wait "$p" || true; done
}
# run_pool passes the index first; adapt argument order.
probe_at() { probe_job "$2" "$1" "$3" "$4"; }
alive_at() { alive_job "$2" "$1" "$3"; }

agents_dead() { # prints the first agent that has exited, with its log tail
    local i
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            echo "agent n$i (pid ${PIDS[$i]}) exited during start-up; its log ends:"
            tail -n 5 "$CUR_DIR/n$i.log" | sed 's/^/    /'
            return 0
        fi
    done
    return 1
}
cpu_ticks() { # busy and total jiffies of the whole machine: CPU_BUSY CPU_TOTAL
    local cpu u n s idle iow irq sirq st rest
    read -r cpu u n s idle iow irq sirq st rest </proc/stat
    CPU_BUSY=$((u + n + s + irq + sirq + st))
    CPU_TOTAL=$((CPU_BUSY + idle + iow))
}
agents_cpu_ticks() { # utime+stime of every agent: AG_TICKS
    local f=("${@/#//proc/}")
    AG_TICKS=$(cat "${f[@]/%//stat}" 2>/dev/null | awk '{ s += $14 + $15 } END { print s + 0 }')
}

ROWS=()
declare -A RESULT_T RESULT_RSS RESULT_PSS RESULT_USS

measure() { # system N
    local sys=$1 n=$2 dir="$WORK/$1-$2" i
    CUR_DIR=$dir
    mkdir -p "$dir"
    echo "== $sys, N=$n: starting $n agents" >&2
    local t_start
    now_us; t_start=$NOW
    for ((i = 0; i < n; i++)); do
        start_agent "$sys" "$dir" "$i"
        if ((i == 0)); then sleep 1; fi
    done

    # 1. The first agent lists N alive.
    local deadline=$((t_start + START_MAX_S * 1000000)) msg
    while :; do
        if msg=$(agents_dead); then
            echo "$msg" >&2
            ROWS+=("$sys|$n|start failed: $(echo "$msg" | tail -n 1 | sed 's/^ *//')")
            stop_agents
            return 0
        fi
        query "$sys" 0
        alive_count "$sys"
        if ((ALIVE == n)); then break; fi
        now_us
        if ((NOW > deadline)); then
            echo "   first agent sees only $ALIVE of $n alive after ${START_MAX_S}s" >&2
            ROWS+=("$sys|$n|start failed: first agent saw $ALIVE of $n alive after ${START_MAX_S}s")
            stop_agents
            return 0
        fi
        sleep 1
    done
    now_us
    echo "   first agent sees $n alive after $(fmt_s $((NOW - t_start))) s" >&2

    # 2. Every agent lists N alive (so no one can miss the victim because it never knew it).
    local pending=() seen
    for ((i = 0; i < n; i++)); do pending+=("$i"); done
    deadline=$((NOW + CONVERGE_MAX_S * 1000000))
    while ((${#pending[@]} > 0)); do
        : >"$dir/alive.out"
        run_pool alive_at "$sys" "$dir/alive.out" -- "${pending[@]}"
        pending=()
        while read -r i seen; do ((seen == n)) || pending+=("$i"); done <"$dir/alive.out"
        now_us
        ((NOW < deadline)) || break
        ((${#pending[@]} == 0)) || sleep 1
    done
    local converge_note=""
    if ((${#pending[@]} > 0)); then
        converge_note="${#pending[@]} agents never listed all $n alive;"
        echo "   $converge_note" >&2
    else
        echo "   every agent sees $n alive" >&2
    fi

    # Idle CPU of the agents, RSS, then the kill.
    local ag0 ag1 idle_pct
    agents_cpu_ticks "${PIDS[@]}"
    ag0=$AG_TICKS
    sleep "$SETTLE_S"
    agents_cpu_ticks "${PIDS[@]}"
    ag1=$AG_TICKS
    idle_pct=$(((ag1 - ag0) * 100 / ($(getconf CLK_TCK) * SETTLE_S)))
    local rss_kb rss_srv_kb pss_kb uss_kb
    local files=("${PIDS[@]/#//proc/}")
    rss_kb=$(cat "${files[@]/%//status}" 2>/dev/null | awk '/^VmRSS:/ { s += $2; k++ } END { printf "%d", s / k }')
    rss_srv_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/${PIDS[0]}/status")
    # Other views of the same moment: PSS shares each page among the processes mapping it
    # (so the binary's and libc's pages count 1/N per agent), USS counts only the pages no
    # other process maps. RSS counts every mapped page in full in every agent.
    read -r pss_kb uss_kb < <(cat "${files[@]/%//smaps_rollup}" 2>/dev/null |
        awk '/^Pss:/ { p += $2; k++ } /^Private_(Clean|Dirty):/ { u += $2 } END { printf "%d %d\n", p / k, u / k }')

    local victim=$((n / 2)) vname t0
    vname="n$victim"
    cpu_ticks
    local cb0=$CPU_BUSY ct0=$CPU_TOTAL
    kill -9 "${PIDS[$victim]}"
    now_us
    t0=$NOW
    wait "${PIDS[$victim]}" 2>/dev/null || true
    echo "   killed $vname (pid ${PIDS[$victim]}); polling every live agent" >&2

    # 3. Poll the agents that have not yet marked it failed.
    declare -A lo=() hi=()
    pending=()
    for ((i = 0; i < n; i++)); do ((i == victim)) || pending+=("$i"); done
    deadline=$((t0 + DETECT_MAX_S * 1000000))
    local rounds=0 round_sum=0 round_first=0 rs re s e st absent=0 errors=0 left
    while ((${#pending[@]} > 0)); do
        now_us
        ((NOW < deadline)) || break
        rs=$NOW
        : >"$dir/probe.out"
        run_pool probe_at "$sys" "$vname" "$dir/probe.out" -- "${pending[@]}"
        now_us
        re=$NOW
        rounds=$((rounds + 1))
        round_sum=$((round_sum + re - rs))
        ((rounds > 1)) || round_first=$((re - rs))
        pending=()
        while read -r i s e st; do
            case $st in
            failed | absent)
                hi[$i]=$((e - t0))
                [[ $st == failed ]] || absent=$((absent + 1))
                ;;
            *)
                lo[$i]=$((s - t0))
                [[ $st != error ]] || errors=$((errors + 1))
                pending+=("$i")
                ;;
            esac
        done <"$dir/probe.out"
        left=$((POLL_MS * 1000 - (re - rs)))
        if ((${#pending[@]} > 0 && left > 0)); then sleep "$(fmt_s "$left")"; fi
    done
    cpu_ticks
    local cpu_pct=$(((CPU_BUSY - cb0) * 100 / (CPU_TOTAL - ct0 + 1)))

    # Anyone else falsely marked failed while this ran (the first agent's view)?
    query "$sys" 0
    local others
    if [[ $sys == cairn ]]; then
        others=$(jq -r --arg v "$vname" '[.[]|select(.Name!=$v and .Status!="alive")]|length' <<<"$QOUT" 2>/dev/null || echo "?")
    else
        others=$(jq -r --arg v "$vname" '[(.members // [])[]|select(.name!=$v and .status!="alive")]|length' <<<"$QOUT" 2>/dev/null || echo "?")
    fi
    stop_agents

    local all_hi=0 all_lo=0 first=-1 v sorted med
    for v in "${hi[@]}"; do
        if ((v > all_hi)); then all_hi=$v; fi
        if ((first < 0 || v < first)); then first=$v; fi
    done
    for v in "${lo[@]}"; do if ((v > all_lo)); then all_lo=$v; fi; done
    sorted=($(printf '%s\n' "${hi[@]}" | sort -n))
    med=${sorted[$((${#sorted[@]} / 2))]:-0}
    local t_all notes="$converge_note"
    if ((${#pending[@]} > 0)); then
        t_all="> $DETECT_MAX_S"
        notes+=" ${#pending[@]} agents had not marked it failed after ${DETECT_MAX_S}s;"
    else
        t_all=$(fmt_s "$all_hi")
        RESULT_T[$sys-$n]=$all_hi
    fi
    RESULT_RSS[$sys-$n]=$rss_kb
    RESULT_PSS[$sys-$n]=$pss_kb
    RESULT_USS[$sys-$n]=$uss_kb
    ((absent == 0)) || notes+=" $absent agents had dropped it from the list (counted as failed);"
    ((errors == 0)) || notes+=" $errors queries failed;"
    [[ $others == 0 ]] || notes+=" first agent lists $others other members not alive at the end;"
    local rss_col
    rss_col=$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')
    if [[ $sys == cairn ]]; then
        rss_col+=$(awk -v k="$rss_kb" -v s="$rss_srv_kb" -v n="$n" \
            'BEGIN { printf " (server %.1f, clients %.1f)", s / 1024, (k * n - s) / (n - 1) / 1024 }')
    fi
    local pss_uss_col
    pss_uss_col=$(awk -v p="$pss_kb" -v u="$uss_kb" 'BEGIN { printf "%.1f / %.1f", p / 1024, u / 1024 }')
    ROWS+=("$sys|$n|$t_all|$(fmt_s "$all_lo")-$(fmt_s "$all_hi")|$(fmt_s $((first < 0 ? 0 : first)))|$(fmt_s "$med")|$rss_col|$pss_uss_col|$idle_pct|$((round_first / 1000)) / $((round_sum / (rounds > 0 ? rounds : 1) / 1000)) ($rounds)|$cpu_pct|${notes# }")
    echo "   all live agents marked it failed after $t_all s (first $(fmt_s $((first < 0 ? 0 : first))) s)" >&2
}

for n in "${SIZES[@]}"; do
    for sys in $SYSTEMS; do measure "$sys" "$n"; done
done

echo
echo "Failure detection on loopback: kill -9 of one of N agents until every live agent lists it failed"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr); serf $("$SERF" version 2>/dev/null | head -n 1); poll every ${POLL_MS} ms, $PAR queries at a time"
# A client agent's RSS depends on the layout of its code (build.rs, link/order.sh): say how
# much of the layout file the measured binary still matches.
ORDER=$ROOT/link/client-agent.order
if [[ " $SYSTEMS " == *" cairn "* && -f $ORDER ]] && command -v nm >/dev/null; then
    listed=$(grep -vc '^#' "$ORDER")
    found=$(nm --defined-only "$CAIRN" 2>/dev/null | awk '{ print $3 }' | sort -u |
        comm -12 - <(grep -v '^#' "$ORDER" | sort -u) | wc -l)
    echo "cairn binary: $found of $listed functions named in link/client-agent.order (link/order.sh regenerates it)"
fi
# Every agent maps the code of each shared library it needs, in 64 KiB windows around what
# runs (libm.so was 0.5 MiB of a client agent's RSS until the binary stopped needing it:
# ARCHITECTURE.md, "Client agents").
if [[ " $SYSTEMS " == *" cairn "* ]] && command -v readelf >/dev/null; then
    echo "cairn binary needs: $(readelf -d "$CAIRN" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
fi
echo
echo "| system | N | all marked failed (s) | last agent between (s) | first (s) | median (s) | RSS/agent MiB | PSS / USS per agent MiB | agents' idle CPU (% of a core, all N) | poll round ms: first / mean (rounds) | machine CPU busy while polling % | notes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
echo
ratio() { # a b -> a/b with two decimals, or n/a
    if [[ -n $1 && -n $2 ]]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo n/a; fi
}
for n in "${SIZES[@]}"; do
    line="N=$n: Cairn/Serf time until all marked failed = "
    if [[ -n ${RESULT_T[cairn-$n]:-} && -n ${RESULT_T[serf-$n]:-} ]]; then
        line+=$(awk -v a="${RESULT_T[cairn-$n]}" -v b="${RESULT_T[serf-$n]}" 'BEGIN { printf "%.2f", a / b }')
    else
        line+="n/a"
    fi
    line+=", RSS per agent = "
    if [[ -n ${RESULT_RSS[cairn-$n]:-} && -n ${RESULT_RSS[serf-$n]:-} ]]; then
        # Three decimals and the means in kB: the goal is judged on this ratio, and two
        # decimals would round 0.304 down to it.
        line+=$(awk -v a="${RESULT_RSS[cairn-$n]}" -v b="${RESULT_RSS[serf-$n]}" 'BEGIN { printf "%.3f (%d / %d kB)", a / b, a, b }')
    else
        line+="n/a"
    fi
    line+="   (goal: <= 0.40 and <= 0.30); PSS = $(ratio "${RESULT_PSS[cairn-$n]:-}" "${RESULT_PSS[serf-$n]:-}")"
    line+=", USS = $(ratio "${RESULT_USS[cairn-$n]:-}" "${RESULT_USS[serf-$n]:-}")"
    echo "$line"
done
echo
echo "Polling costs CPU: each query forks the CLI (cairn members / serf members); only agents that"
echo "have not yet marked the member failed are polled, $PAR at a time. The CPU busy column is the"
echo "whole machine's while polling, shared by the agents; the poll round time is the resolution"
echo "of the per-agent times (the 'between' column brackets the last agent's true time)."
