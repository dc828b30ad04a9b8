#!/usr/bin/env bash
# History at scale (docs/performance/at-scale.md). For each backend, two databases with the same
# NGROUPS groups:
#
#   small  history only in the first PROBE_GROUPS groups, MESSAGES/NGROUPS each
#          (100 groups × 1000 = 100,000 messages by default);
#   full   MESSAGES messages over all NGROUPS groups (10,000,000 over 10,000),
#          so the probed groups hold exactly what they hold in `small`.
#
# `next-chat-bench load-history` writes each database directly in the server's
# schema (sqlite: one file; mysql: a fresh MariaDB database plus the group set
# under a fresh Redis key prefix, all removed at the end). Then RUNS rounds,
# small and full in turn: a fresh server is started on the database (start
# time: launch to "listening on", polled every 10 ms) and `next-chat-bench probe-history` measures JoinGroup (with its
# OnHistory of 100 messages), GetHistory (5 pages of 100 back) and
# ListGroupsPage (100 groups after a random one) on random probed groups,
# SAMPLES (1000) rounds after 20 of warm-up.
# Reports: $OUT/<backend>-<db>-load.json and -probe-<run>.json, and a table.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/history-scale.sh [sqlite] [mysql]
#   # MESSAGES=10000000 NGROUPS=10000 PROBE_GROUPS=100 RUNS=3 OUT=/tmp/next-chat-history
#
# Needs Redis on 127.0.0.1:6379 and MariaDB on 127.0.0.1:3306 (root) for mysql.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-history}
RUNS=${RUNS:-3}
MESSAGES=${MESSAGES:-10000000}
NGROUPS=${NGROUPS:-10000}
PROBE_GROUPS=${PROBE_GROUPS:-100}
SAMPLES=${SAMPLES:-1000}
PORT=${PORT:-5120}
TAG=${TAG:-$$}
mkdir -p "$OUT"

SERVER=
DATABASES=()
PREFIXES=()
stop_server() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    fi
    SERVER=
}
cleanup() {
    stop_server
    for db in "${DATABASES[@]:-}"; do
        [ -n "$db" ] && mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $db" || true
    done
    for prefix in "${PREFIXES[@]:-}"; do
        [ -n "$prefix" ] && redis-cli --scan --pattern "$prefix*" | xargs -r redis-cli del >/dev/null
    done
    rm -f "$OUT"/*.db "$OUT"/*.db-wal "$OUT"/*.db-shm
}
trap cleanup EXIT

# start_server NAME ARGS...: sets SERVER, and START to the start time in seconds.
start_server() {
    local name=$1
    shift
    local started
    started=$(date +%s%N)
    "$BIN/next-chat-server" --listen "127.0.0.1:$PORT" "$@" >"$OUT/$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 6000); do
        if grep -q "^listening on" "$OUT/$name.log" 2>/dev/null; then
            START=$(awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
            return 0
        fi
        sleep 0.01
    done
    echo "server $name did not start:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
}

# flags BACKEND DB: sets LOAD_FLAGS and SERVER_FLAGS for that database.
flags() {
    local backend=$1 db=$2 name="$1-$2"
    LOAD_FLAGS=(--groups "$NGROUPS" --group-prefix hist-)
    if [ "$db" = small ]; then
        LOAD_FLAGS+=(--history-groups "$PROBE_GROUPS" --messages $((PROBE_GROUPS * MESSAGES / NGROUPS)))
    else
        LOAD_FLAGS+=(--messages "$MESSAGES")
    fi
    if [ "$backend" = sqlite ]; then
        SERVER_FLAGS=(--database "sqlite://$OUT/$name.db")
    else
        SERVER_FLAGS=(--database "mysql://root@127.0.0.1:3306/nc_hist_${TAG}_$db"
            --redis redis://127.0.0.1:6379 --redis-key-prefix "nc-hist-$TAG-$db:")
    fi
}

# one BACKEND: loads both databases, then RUNS rounds of (start, probe, stop)
# on each, small and full interleaved so that the machine's noise hits both.
one() {
    local backend=$1 db
    for db in small full; do
        flags "$backend" "$db"
        if [ "$backend" = mysql ]; then
            DATABASES+=("nc_hist_${TAG}_$db")
            PREFIXES+=("nc-hist-$TAG-$db:")
            mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS nc_hist_${TAG}_$db"
        fi
        echo "== $backend-$db: loading" >&2
        "$BIN/next-chat-bench" load-history "${SERVER_FLAGS[@]}" "${LOAD_FLAGS[@]}" \
            >"$OUT/$backend-$db-load.json"
        cat "$OUT/$backend-$db-load.json" >&2
    done
    for run in $(seq "$RUNS"); do
        for db in small full; do
            local name="$backend-$db"
            flags "$backend" "$db"
            start_server "$name-$run" "${SERVER_FLAGS[@]}"
            echo "$START" >"$OUT/$name-start-$run.txt"
            "$BIN/next-chat-bench" probe-history --url "http://127.0.0.1:$PORT/next-chat" \
                --groups "$NGROUPS" --probe-groups "$PROBE_GROUPS" --samples "$SAMPLES" \
                >"$OUT/$name-probe-$run.json"
            stop_server
            python3 - "$OUT/$name-probe-$run.json" "$START" "$name-$run" >&2 <<'EOF2'
import json, sys
r = json.load(open(sys.argv[1]))
f = lambda k: f"{r[k]['p50']:.2f}/{r[k]['p99']:.2f}"
print(f"  {sys.argv[3]}: start {sys.argv[2]} s; p50/p99 ms: join {f('join_ms')}, "
      f"GetHistory {f('get_history_ms')}, ListGroupsPage {f('list_groups_page_ms')}")
EOF2
        done
    done
    if [ "$backend" = sqlite ]; then
        for db in small full; do
            # After the server's runs: the file with its WAL, as a deployment has it.
            du -b "$OUT/$backend-$db.db"* | awk '{s += $1} END {print s}' >"$OUT/$backend-$db-bytes.txt"
            rm -f "$OUT/$backend-$db.db" "$OUT/$backend-$db.db-wal" "$OUT/$backend-$db.db-shm"
        done
    fi
}

summary() {
    python3 - "$OUT" "$@" <<'EOF'
import glob, json, statistics, sys
out, backends = sys.argv[1], sys.argv[2:]
med = statistics.median
for backend in backends:
    rows = {}
    for db in ("small", "full"):
        name = f"{out}/{backend}-{db}"
        load = json.load(open(f"{name}-load.json"))
        probes = [json.load(open(p)) for p in sorted(glob.glob(f"{name}-probe-*.json"))]
        starts = [float(open(p).read()) for p in sorted(glob.glob(f"{name}-start-*.txt"))]
        row = {"messages": load["messages"], "load_s": load["seconds"],
               "bytes_per_message": load["bytes_per_message"], "start_s": med(starts),
               "runs": len(probes)}
        for key in ("join_ms", "get_history_ms", "list_groups_page_ms"):
            for q in ("p50", "p99"):
                values = [p[key][q] for p in probes]
                row[f"{key}.{q}"] = (med(values), min(values), max(values))
        rows[db] = row
    print(f"{backend}: {rows['full']['messages']:,} messages loaded in {rows['full']['load_s']:.0f} s, "
          f"{rows['full']['bytes_per_message']:.0f} bytes per message; "
          f"server start {rows['small']['start_s']:.2f} s (small) vs {rows['full']['start_s']:.2f} s (full)")
    print("| call | small p50 | full p50 | ratio | small p99 | full p99 | ratio |")
    print("|---|---|---|---|---|---|---|")
    for key, label in (("join_ms", "JoinGroup + OnHistory"), ("get_history_ms", "GetHistory"),
                       ("list_groups_page_ms", "ListGroupsPage")):
        cells = []
        for q in ("p50", "p99"):
            s, f = rows["small"][f"{key}.{q}"], rows["full"][f"{key}.{q}"]
            cells += [f"{s[0]:.2f} ({s[1]:.2f}–{s[2]:.2f})", f"{f[0]:.2f} ({f[1]:.2f}–{f[2]:.2f})",
                      f"{f[0] / s[0]:.2f}×" if s[0] else "-"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
EOF
}

[ $# -gt 0 ] || set -- sqlite mysql
for backend in "$@"; do
    case "$backend" in
        sqlite | mysql) one "$backend" ;;
        *) echo "unknown backend $backend (sqlite, mysql)" >&2; exit 2 ;;
    esac
done
summary "$@" | tee "$OUT/summary.md"
