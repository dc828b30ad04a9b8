#!/usr/bin/env bash
# 100,000 connections on one machine (docs/performance/at-scale.md). Each run starts fresh embedded
# servers and has next-chat-bench hold C joined connections in groups of 20:
#
#   idle  C idle connections for 10 s: server RSS per connection, the bench's
#         own RSS per connection, the accept rate (connections made and joined
#         per second, all of them), the servers' idle CPU (keep-alive pings);
#   load  the S2 load over C connections: one sender per group of 20 at an
#         aggregate RATE msg/s for 20 s: p99 and server CPU per delivery.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/scale-connections.sh [idle] [load]
#   # C=100000 RATE=1000 RUNS=3 PAIRS=(from the open-file limit) OUT=/tmp/next-chat-scale
#
# Open files bound everything here: a process holds one per connection, and
# the hard RLIMIT_NOFILE can only be raised with CAP_SYS_RESOURCE (fs.nr_open
# bounds it). When C connections (plus 300 for the process itself) fit in the
# hard limit, one server and one bench process hold them all; when they do
# not, C is split over PAIRS server+bench pairs (server p on port PORT+p, its
# bench connecting from 127.0.0.(2+p)), started together, and the reports are
# added up; the benches start their measured windows together (--ready-file,
# --go-file), once the last of them has joined. The bench raises its own soft limit to the hard one; this script
# does the same for the servers, whose TCP cap (max_http_connections) defaults
# to the soft limit less 256 and whose max_connections (200,000) is above C.
#
# Other kernel settings (printed to $OUT/limits.txt, not changed):
# - local ports: one source address has net.ipv4.ip_local_port_range's ports
#   (32768-60999: 28,232) per server address; one server holding 100,000 needs
#   --source-ip with 4+ addresses of 127.0.0.0/8, which Linux routes to lo;
# - net.core.somaxconn (4096) bounds the accept backlog; each bench opens
#   CONCURRENCY (16) at once, below it; fs.file-max bounds all open files.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-scale}
RUNS=${RUNS:-3}
C=${C:-100000}
RATE=${RATE:-1000}
CONCURRENCY=${CONCURRENCY:-16}
# A connection that has not sent its request head 10 s after it was accepted
# is closed (http_header_timeout_secs); with a dozen processes and other work
# on two cores, connects starve longer than that while 100,000 open.
SERVER_FLAGS=${SERVER_FLAGS:---http-header-timeout-secs 60}
PORT=${PORT:-5110}
mkdir -p "$OUT"
# Room for all C in one process, if this shell may raise its hard limit
# (CAP_SYS_RESOURCE; fs.nr_open bounds it); else the pairs below.
ulimit -Hn $((C + 1000)) 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
HARD=$(ulimit -Hn)
# Connections one process may hold, in whole groups of 20.
PER_PROCESS=$(( (HARD - 300) / 20 * 20 ))
PAIRS=${PAIRS:-$(( (C + PER_PROCESS - 1) / PER_PROCESS ))}
# Each pair's share, in whole groups.
PER_PAIR=$(( ((C + PAIRS - 1) / PAIRS + 19) / 20 * 20 ))
if [ "$PAIRS" -eq 1 ]; then
    # One server: 28,000 ports per source address.
    SOURCES=${SOURCES:-127.0.0.2-127.0.0.$(( 2 + C / 25000 ))}
fi

{
    echo "ulimit -n $(ulimit -n) (hard $HARD); $PAIRS server+bench pair(s) of $PER_PAIR connections"
    for key in net.ipv4.ip_local_port_range fs.nr_open fs.file-max net.core.somaxconn \
        net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_mem net.netfilter.nf_conntrack_max; do
        echo "$key = $(sysctl -n "$key" 2>/dev/null | tr '\t' ' ' || echo '?')"
    done
    grep CapEff /proc/self/status
} | tee "$OUT/limits.txt" >&2

SERVERS=()
cleanup() {
    for pid in "${SERVERS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    # Closing thousands of connections gracefully takes a while; 30 s at most.
    for _ in $(seq 300); do
        local alive=0
        for pid in "${SERVERS[@]:-}"; do
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${SERVERS[@]:-}"; do
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    SERVERS=()
}
trap cleanup EXIT

start_server() {
    local name=$1 port=$2
    rm -f "$OUT/$name.db" "$OUT/$name.db-wal" "$OUT/$name.db-shm"
    # shellcheck disable=SC2086
    "$BIN/next-chat-server" --listen "127.0.0.1:$port" --database "sqlite://$OUT/$name.db" \
        $SERVER_FLAGS >"$OUT/$name.log" 2>&1 &
    SERVERS+=($!)
    for _ in $(seq 200); do
        grep -q "^listening on" "$OUT/$name.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server $name did not start:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
}

# run NAME BENCH-FLAGS...: PAIRS servers, then PAIRS benches at once; reports
# in $OUT/NAME-p<pair>.json, summed up in $OUT/NAME.json.
run() {
    local name=$1
    shift
    echo "== $name" >&2
    for p in $(seq 0 $((PAIRS - 1))); do start_server "$name-p$p" $((PORT + p)); done
    local benches=()
    rm -f "$OUT/$name".ready-* "$OUT/$name.go"
    for p in $(seq 0 $((PAIRS - 1))); do
        local sources=${SOURCES:-127.0.0.$((2 + p))}
        "$BIN/next-chat-bench" --quiet --threads 1 --json \
            --url "http://127.0.0.1:$((PORT + p))/next-chat" -c "$PER_PAIR" -g 20 \
            --source-ip "$sources" --connect-concurrency "$CONCURRENCY" \
            --server-pid "${SERVERS[$p]}" --ready-file "$OUT/$name.ready-$p" \
            --go-file "$OUT/$name.go" "$@" >"$OUT/$name-p$p.json" &
        benches+=($!)
    done
    # Every pair's measured window starts together, after the last join (a
    # bench that failed to connect has exited: stop waiting for it).
    while :; do
        local waiting=0
        for p in $(seq 0 $((PAIRS - 1))); do
            if [ ! -e "$OUT/$name.ready-$p" ] && kill -0 "${benches[$p]}" 2>/dev/null; then
                waiting=1
            fi
        done
        [ "$waiting" = 0 ] && break
        sleep 0.2
    done
    touch "$OUT/$name.go"
    for pid in "${benches[@]}"; do wait "$pid" || true; done
    cleanup
    python3 "$ROOT/crates/bench/scripts/scale-sum.py" "$OUT/$name" "$PAIRS" | tee "$OUT/$name.txt" >&2
}

idle() {
    for run in $(seq "$RUNS"); do run "idle-$run" --idle --settle 10; done
}

load() {
    local rate
    rate=$(python3 -c "print($RATE / $PAIRS)")
    for run in $(seq "$RUNS"); do
        run "load-$run" -r "$rate" -l 200 -d 20 -w 5 --drain 20
    done
}

[ $# -gt 0 ] || set -- idle load
for what in "$@"; do
    case "$what" in
        idle) idle ;; load) load ;;
        *) echo "unknown run $what (idle, load)" >&2; exit 2 ;;
    esac
done
