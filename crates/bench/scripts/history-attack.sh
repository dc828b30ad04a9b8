#!/usr/bin/env bash
# History-read attack (docs/performance/history-attack.md): can one group's
# history readers starve everyone else? For each backend, a fresh server; then
# `next-chat-bench history-attack`: a filler sends FILL messages of FILL_CHARS
# emoji (16,384: 64 KiB each) to one group; READERS members of it call
# GetHistory(g, null, 500) in a loop from a process of their own; a probe user
# on a small group of its own times rounds of LeaveGroup + JoinGroup +
# GetHistory(20) + SendMessage (one every 50 ms): BASELINE seconds without the
# readers, then ATTACK seconds with them. The server's RSS is sampled every
# 100 ms. RUNS runs per backend, interleaved.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/history-attack.sh [sqlite] [mysql]
#   # RUNS=3 FILL=500 READERS=16 BASELINE=10 ATTACK=20 OUT=/tmp/next-chat-attack
#
# Reports: $OUT/<backend>-<run>.json and a table (probe round p50/p99 before
# and during the attack, RSS growth, pages read and reads refused).
# Needs Redis on 127.0.0.1:6379 and MariaDB on 127.0.0.1:3306 (root) for mysql;
# the run's database and key prefix are removed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-attack}
RUNS=${RUNS:-3}
FILL=${FILL:-500}
FILL_CHARS=${FILL_CHARS:-16384}
READERS=${READERS:-16}
BASELINE=${BASELINE:-10}
ATTACK=${ATTACK:-20}
# READERS_WAIT=1: the readers wait the "retry in X ms" of a refusal (a
# well-behaved client); by default they ask again at once (an attacker).
READERS_WAIT=${READERS_WAIT:-}
PORT=${PORT:-5130}
TAG=${TAG:-$$}
BACKENDS=("$@")
[ ${#BACKENDS[@]} -eq 0 ] && BACKENDS=(sqlite mysql)
mkdir -p "$OUT"

SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    fi
    SERVER=
    mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS nc_attack_$TAG" 2>/dev/null || true
    redis-cli --scan --pattern "nc-attack-$TAG:*" | xargs -r redis-cli del >/dev/null || true
    rm -f "$OUT"/*.db "$OUT"/*.db-wal "$OUT"/*.db-shm
}
trap cleanup EXIT

start_server() {
    local name=$1
    shift
    "$BIN/next-chat-server" --listen "127.0.0.1:$PORT" "$@" >"$OUT/$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 3000); do
        grep -q "^listening on" "$OUT/$name.log" 2>/dev/null && return 0
        sleep 0.01
    done
    echo "server $name did not start:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
}

for run in $(seq "$RUNS"); do
    for backend in "${BACKENDS[@]}"; do
        cleanup
        if [ "$backend" = sqlite ]; then
            flags=(--database "sqlite://$OUT/attack.db")
        else
            flags=(--database "mysql://root@127.0.0.1:3306/nc_attack_$TAG" --migrate true
                --redis redis://127.0.0.1:6379 --redis-key-prefix "nc-attack-$TAG:")
        fi
        echo "== $backend run $run" >&2
        start_server "$backend-$run" "${flags[@]}"
        "$BIN/next-chat-bench" history-attack --url "http://127.0.0.1:$PORT/next-chat" \
            --server-pid "$SERVER" --fill "$FILL" --fill-chars "$FILL_CHARS" \
            --readers "$READERS" --baseline "$BASELINE" --attack "$ATTACK" \
            ${READERS_WAIT:+--readers-wait} \
            >"$OUT/$backend-$run.json"
        cleanup
    done
done

python3 - "$OUT" "${BACKENDS[@]}" <<'PY'
import json, sys, glob, os
out, backends = sys.argv[1], sys.argv[2:]
print("| backend | run | round p50 before | p99 before | p50 during | p99 during | RSS before | RSS growth | pages read | reads refused |")
print("|---|---|---|---|---|---|---|---|---|---|")
for backend in backends:
    for path in sorted(glob.glob(os.path.join(out, f"{backend}-*.json"))):
        r = json.load(open(path))
        run = os.path.basename(path)[len(backend) + 1:-5]
        b, a, rd = r["baseline_round_ms"], r["attack_round_ms"], r["readers"]
        print(f"| {backend} | {run} | {b['p50']:.1f} ms | {b['p99']:.1f} ms | {a['p50']:.1f} ms "
              f"| {a['p99']:.1f} ms | {r['rss_before_mib']:.0f} MiB | {r['rss_growth_mib']:.1f} MiB "
              f"| {rd['pages']} | {rd['refused']} |")
PY
