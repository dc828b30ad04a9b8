#!/usr/bin/env bash
# How the message bus scales: four instances share Redis and MariaDB, each
# serving its own quarter of the groups (next-chat-bench --url-per-group), and
# each reports what its stream readers took from Redis
# (nextchat_bus_entries_received_total, nextchat_bus_bytes_received_total).
# One run per shard count: 1 shard is how every version before selective reads
# behaved (every instance read every message).
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/bus-scaling.sh            # SHARDS="1 4 64 256"
#
# Env: SHARDS, CONNECTIONS (1000), RATE (1000 messages/s), DURATION (20 s),
# OUT (/tmp/next-chat-bus). Needs Redis on 127.0.0.1:6379 and MariaDB on
# 127.0.0.1:3306 (root, no password); each run uses a fresh key prefix and
# database and removes them afterwards.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-bus}
SHARDS=${SHARDS:-"1 4 64 256"}
CONNECTIONS=${CONNECTIONS:-1000}
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
INSTANCES=4
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

metric() { # metric PORT NAME
    curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

printf '%-7s %-9s %-12s %-14s %-16s %-10s %s\n' shards instance entries "entries/accepted" "bus bytes/s" "shards read" "p99 ms"
for shards in $SHARDS; do
    run="bus-$shards-$$"
    prefix="$run:"
    database="bus_${shards}_$$"
    urls=()
    for i in $(seq 0 $((INSTANCES - 1))); do
        port=$((5200 + i))
        "$BIN/next-chat-server" --listen "127.0.0.1:$port" --redis redis://127.0.0.1:6379 \
            --redis-key-prefix "$prefix" --redis-stream-shards "$shards" \
            --database "mysql://root@127.0.0.1:3306/$database" --migrate \
            >"$OUT/$run-$i.log" 2>&1 &
        SERVERS+=("$!")
        for _ in $(seq 100); do
            grep -q "^listening on" "$OUT/$run-$i.log" 2>/dev/null && break
            sleep 0.1
        done
        urls+=("http://127.0.0.1:$port/next-chat")
    done
    url_list=$(IFS=,; echo "${urls[*]}")
    "$BIN/next-chat-bench" --quiet --json --url "$url_list" --url-per-group \
        -c "$CONNECTIONS" -g 20 -r "$RATE" -l 200 -d "$DURATION" -w 3 >"$OUT/$run.json" &
    bench=$!
    # Which shards each instance reads, mid-run (all connections joined).
    sleep $((DURATION / 2 + 3))
    read_now=()
    for i in $(seq 0 $((INSTANCES - 1))); do
        read_now+=("$(metric $((5200 + i)) nextchat_bus_shards_read)")
    done
    wait "$bench" || true
    sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["load"]["accepted_total"])' "$OUT/$run.json")
    p99=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["load"]["latency_ms"]["p99"])' "$OUT/$run.json")
    seconds=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["config"]["duration_s"] + r["config"]["warmup_s"])' "$OUT/$run.json")
    for i in $(seq 0 $((INSTANCES - 1))); do
        port=$((5200 + i))
        entries=$(metric "$port" nextchat_bus_entries_received_total)
        bytes=$(metric "$port" nextchat_bus_bytes_received_total)
        python3 -c 'import sys; s,i,e,sent,b,sec,sh,p=sys.argv[1:]; print(f"{s:<7} {i:<9} {e:<12} {int(e)/max(int(sent),1):<14.2f} {float(b)/float(sec):<16.0f} {sh:<10} {p}")' \
            "$shards" "$i" "$entries" "$sent" "$bytes" "$seconds" "${read_now[$i]}" "$p99"
    done
    cleanup
    redis-cli --scan --pattern "$prefix*" | xargs -r -d '\n' redis-cli del >/dev/null
    mariadb -uroot -h127.0.0.1 -P3306 -e "DROP DATABASE IF EXISTS $database"
done
