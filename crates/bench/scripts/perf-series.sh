#!/usr/bin/env bash
# The measurement series of docs/performance (the scenarios in docs/performance/README.md): S1-S5, three runs
# each, every run against a freshly started server (fresh SQLite file, or a
# fresh MySQL database and Redis key prefix), reports as JSON in $OUT.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/perf-series.sh [S1 S2 S3 S4 S5]
#   python3 crates/bench/scripts/summarize.py "$OUT"
#
# Needs Redis on 127.0.0.1:6379 and MariaDB on 127.0.0.1:3306 (root, no
# password) for S5. Only loopback addresses are used.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-perf}
RUNS=${RUNS:-3}
S3_RATES=${S3_RATES:-"6000 7000 8000 9000 10000 11000 12000"}
S5_RATES=${S5_RATES:-"4000 5000 6000"}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

SERVERS=()
cleanup() {
    for pid in "${SERVERS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    SERVERS=()
}
trap cleanup EXIT

# start_server PORT NAME ARGS...: starts a server, waits until it listens.
start_server() {
    local port=$1 name=$2
    shift 2
    "$BIN/next-chat-server" --listen "127.0.0.1:$port" "$@" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    SERVERS+=("$pid")
    for _ in $(seq 100); do
        grep -q "^listening on" "$OUT/$name.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server $name did not start:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
}

embedded() {
    local name=$1
    rm -f "$OUT/$name.db" "$OUT/$name.db-wal" "$OUT/$name.db-shm"
    start_server 5100 "$name" --database "sqlite://$OUT/$name.db"
}

bench() {
    local name=$1
    shift
    echo "== $name" >&2
    "$BIN/next-chat-bench" --quiet --threads 1 --json "$@" >"$OUT/$name.json" || true
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r.get("load") or {}; s=r.get("server") or {}; print("  lost", l.get("lost"), "p99", (l.get("latency_ms") or {}).get("p99"), "us/delivery", s.get("cpu_us_per_delivery"))' "$OUT/$name.json" >&2 || true
}

s1() {
    for run in $(seq "$RUNS"); do
        embedded "s1-$run"
        bench "s1-$run" --url http://127.0.0.1:5100/next-chat -c 1 -r 1000 -l 1000 -d 20 -w 3 \
            --server-pid "${SERVERS[-1]}"
        cleanup
    done
}

load_run() {
    local name=$1 rate=$2
    embedded "$name"
    bench "$name" --url http://127.0.0.1:5100/next-chat -c 1000 -g 20 -r "$rate" -l 200 -d 20 -w 3 \
        --server-pid "${SERVERS[-1]}" --plot "$OUT/$name.svg"
    cleanup
}

s2() {
    for run in $(seq "$RUNS"); do load_run "s2-$run" 1000; done
}

s3() {
    for rate in $S3_RATES; do
        for run in $(seq "$RUNS"); do load_run "s3-$rate-$run" "$rate"; done
    done
}

s4() {
    for run in $(seq "$RUNS"); do
        embedded "s4-$run"
        bench "s4-$run" --url http://127.0.0.1:5100/next-chat -c 10000 -g 20 --idle --settle 10 \
            --server-pid "${SERVERS[-1]}"
        cleanup
    done
}

scale_out_run() {
    local name=$1 rate=$2
    local db="nc_perf_${name//-/_}"
    mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
    local flags=(--redis redis://127.0.0.1:6379 --redis-key-prefix "nc-perf-$name:"
        --database "mysql://root@127.0.0.1:3306/$db" --migrate)
    start_server 5101 "$name-a" "${flags[@]}"
    start_server 5102 "$name-b" "${flags[@]}"
    bench "$name" --url http://127.0.0.1:5101/next-chat,http://127.0.0.1:5102/next-chat \
        -c 1000 -g 20 -r "$rate" -l 200 -d 20 -w 3 --server-pid "${SERVERS[-2]},${SERVERS[-1]}"
    # Every accepted message (warm-up included) must be in MySQL, once the
    # servers have stored what they still held.
    cleanup
    local prefix stored
    prefix=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["group_prefix"])' "$OUT/$name.json")
    stored=$(mariadb -uroot -h127.0.0.1 -N -e "SELECT COUNT(*) FROM $db.messages WHERE group_id LIKE '$prefix%'")
    echo "$stored" >"$OUT/$name.mysql"
    echo "  stored in MySQL: $stored" >&2
    mariadb -uroot -h127.0.0.1 -e "DROP DATABASE $db"
    redis-cli --scan --pattern "nc-perf-$name:*" | xargs -r redis-cli del >/dev/null
}

s5() {
    for run in $(seq "$RUNS"); do scale_out_run "s5-$run" 1000; done
    for rate in $S5_RATES; do
        for run in $(seq "$RUNS"); do scale_out_run "s5-$rate-$run" "$rate"; done
    done
}

[ $# -gt 0 ] || set -- S1 S2 S3 S4 S5
for scenario in "$@"; do
    case "$scenario" in
        S1) s1 ;; S2) s2 ;; S3) s3 ;; S4) s4 ;; S5) s5 ;;
        *) echo "unknown scenario $scenario (S1..S5)" >&2; exit 2 ;;
    esac
done
