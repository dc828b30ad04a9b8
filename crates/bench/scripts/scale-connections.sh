#!/usr/bin/env bash
# Issue 15: 100,000 connections on one machine. Each run starts a fresh
# embedded server and has next-chat-bench hold C joined connections in groups
# of 20, from several loopback source addresses:
#
#   idle  C idle connections for 10 s: server RSS per connection, the bench's
#         own RSS per connection, the accept rate (connections made and joined
#         per second), the server's idle CPU (keep-alive pings);
#   load  the S2 load over C connections: one sender per group of 20 at an
#         aggregate RATE msg/s for 20 s: p99 and server CPU per delivery.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/scale-connections.sh [idle] [load]
#   # C=100000 RATE=1000 RUNS=3 SOURCES=127.0.0.2-127.0.0.6 OUT=/tmp/next-chat-scale
#
# What the machine needs (checked and printed, not changed, except the
# open-file limit of this shell, which root may raise up to fs.nr_open):
# - open files: the server one per connection (plus its own), the bench too;
#   this script sets `ulimit -n $NOFILE` (default 262144) for both. The server
#   caps TCP connections at its soft limit less 256 (max_http_connections) and
#   SignalR connections at max_connections (200,000): both above 100,000 then.
# - local ports: one source address has net.ipv4.ip_local_port_range's ports
#   (32768-60999: 28,232) per server address, so 100,000 connections come from
#   5 addresses of 127.0.0.0/8 (--source-ip), which Linux routes to lo as is.
# - net.core.somaxconn (4096) bounds the accept backlog; the bench opens
#   CONCURRENCY (256) at once, far below it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-scale}
RUNS=${RUNS:-3}
C=${C:-100000}
RATE=${RATE:-1000}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.6}
CONCURRENCY=${CONCURRENCY:-256}
NOFILE=${NOFILE:-262144}
PORT=${PORT:-5110}
mkdir -p "$OUT"
ulimit -Hn "$NOFILE" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

{
    echo "ulimit -n $(ulimit -n)"
    for key in net.ipv4.ip_local_port_range fs.nr_open fs.file-max net.core.somaxconn \
        net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_mem net.netfilter.nf_conntrack_max; do
        echo "$key = $(sysctl -n "$key" 2>/dev/null | tr '\t' ' ' || echo '?')"
    done
} | tee "$OUT/limits.txt" >&2

SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    fi
    SERVER=
}
trap cleanup EXIT

start_server() {
    local name=$1
    rm -f "$OUT/$name.db" "$OUT/$name.db-wal" "$OUT/$name.db-shm"
    "$BIN/next-chat-server" --listen "127.0.0.1:$PORT" --database "sqlite://$OUT/$name.db" \
        >"$OUT/$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 200); do
        grep -q "^listening on" "$OUT/$name.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server $name did not start:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
}

bench() {
    local name=$1
    shift
    echo "== $name" >&2
    "$BIN/next-chat-bench" --quiet --threads 1 --json --url "http://127.0.0.1:$PORT/next-chat" \
        -c "$C" -g 20 --source-ip "$SOURCES" --connect-concurrency "$CONCURRENCY" \
        --server-pid "$SERVER" "$@" >"$OUT/$name.json" || true
    python3 - "$OUT/$name.json" >&2 <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
c, b, s = r["connect"], r["bench"], r.get("server") or {}
i, l = r.get("idle") or {}, r.get("load") or {}
print(f"  joined in {c['total_s']:.1f} s ({c['per_second']:.0f}/s); bench RSS "
      f"{b['rss_per_connection_kib']:.2f} KiB/conn, peak {b['rss_peak_mib']:.0f} MiB; "
      f"server {s.get('cores', 0):.2f} cores", end="")
if i:
    print(f"; server RSS {i['rss_per_connection_kib']:.2f} KiB/conn", end="")
if l:
    print(f"; lost {l['lost']} of {l['expected']}, p99 {l['latency_ms']['p99']:.1f} ms, "
          f"{s.get('cpu_us_per_delivery') or 0:.1f} us/delivery", end="")
print()
EOF
}

idle() {
    for run in $(seq "$RUNS"); do
        start_server "idle-$run"
        bench "idle-$run" --idle --settle 10
        cleanup
    done
}

load() {
    for run in $(seq "$RUNS"); do
        start_server "load-$run"
        bench "load-$run" -r "$RATE" -l 200 -d 20 -w 5 --drain 20
        cleanup
    done
}

[ $# -gt 0 ] || set -- idle load
for what in "$@"; do
    case "$what" in
        idle) idle ;; load) load ;;
        *) echo "unknown run $what (idle, load)" >&2; exit 2 ;;
    esac
done
