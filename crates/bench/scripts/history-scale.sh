#!/usr/bin/env bash
# Issue 15: history at scale. For each backend, two databases with the same
# GROUPS groups:
#
#   small  history only in the first PROBE_GROUPS groups, MESSAGES/GROUPS each
#          (100 groups × 1000 = 100,000 messages by default);
#   full   MESSAGES messages over all GROUPS groups (10,000,000 over 10,000),
#          so the probed groups hold exactly what they hold in `small`.
#
# `next-chat-bench load-history` writes each database directly in the server's
# schema (sqlite: one file; mysql: a fresh MariaDB database plus the group set
# under a fresh Redis key prefix, both removed at the end). Then RUNS times: a
# fresh server is started on it (start time: launch to "listening on", polled
# every 10 ms) and `next-chat-bench probe-history` measures JoinGroup (with its
# OnHistory of 100 messages), GetHistory (5 pages of 100 back) and
# ListGroupsPage (100 groups after a random one) on random probed groups.
# Reports: $OUT/<backend>-<db>-load.json and -probe-<run>.json, and a table.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/history-scale.sh [sqlite] [mysql]
#   # MESSAGES=10000000 GROUPS=10000 PROBE_GROUPS=100 RUNS=3 OUT=/tmp/next-chat-history
#
# Needs Redis on 127.0.0.1:6379 and MariaDB on 127.0.0.1:3306 (root) for mysql.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-history}
RUNS=${RUNS:-3}
MESSAGES=${MESSAGES:-10000000}
GROUPS=${GROUPS:-10000}
PROBE_GROUPS=${PROBE_GROUPS:-100}
SAMPLES=${SAMPLES:-200}
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

# start_server NAME ARGS...: prints the start time in seconds.
start_server() {
    local name=$1
    shift
    local started
    started=$(date +%s%N)
    "$BIN/next-chat-server" --listen "127.0.0.1:$PORT" "$@" >"$OUT/$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 6000); do
        if grep -q "^listening on" "$OUT/$name.log" 2>/dev/null; then
            awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }'
            return 0
        fi
        sleep 0.01
    done
    echo "server $name did not start:" >&2
    cat "$OUT/$name.log" >&2
    exit 1
}

# one BACKEND DB: load, then RUNS × (start, probe, stop).
one() {
    local backend=$1 db=$2 name="$1-$2"
    local load_flags=(--groups "$GROUPS" --group-prefix hist-)
    if [ "$db" = small ]; then
        load_flags+=(--history-groups "$PROBE_GROUPS" --messages $((PROBE_GROUPS * MESSAGES / GROUPS)))
    else
        load_flags+=(--messages "$MESSAGES")
    fi
    local server_flags
    if [ "$backend" = sqlite ]; then
        server_flags=(--database "sqlite://$OUT/$name.db")
    else
        local database="nc_hist_${TAG}_$db" prefix="nc-hist-$TAG-$db:"
        DATABASES+=("$database")
        PREFIXES+=("$prefix")
        mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $database"
        server_flags=(--database "mysql://root@127.0.0.1:3306/$database"
            --redis redis://127.0.0.1:6379 --redis-key-prefix "$prefix")
    fi
    echo "== $name: loading" >&2
    "$BIN/next-chat-bench" load-history "${server_flags[@]}" "${load_flags[@]}" \
        >"$OUT/$name-load.json"
    cat "$OUT/$name-load.json" >&2
    for run in $(seq "$RUNS"); do
        local start
        start=$(start_server "$name-$run" "${server_flags[@]}")
        echo "$start" >"$OUT/$name-start-$run.txt"
        "$BIN/next-chat-bench" probe-history --url "http://127.0.0.1:$PORT/next-chat" \
            --groups "$GROUPS" --probe-groups "$PROBE_GROUPS" --samples "$SAMPLES" \
            >"$OUT/$name-probe-$run.json"
        stop_server
        python3 - "$OUT/$name-probe-$run.json" "$start" >&2 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
f = lambda k: f"{r[k]['p50']:.2f}/{r[k]['p99']:.2f}"
print(f"  start {sys.argv[2]} s; p50/p99 ms: join {f('join_ms')}, "
      f"GetHistory {f('get_history_ms')}, ListGroupsPage {f('list_groups_page_ms')}")
EOF
    done
    if [ "$backend" = sqlite ]; then
        # After the server's runs: the file with its WAL, as a deployment has it.
        du -b "$OUT/$name.db"* | awk '{s += $1} END {print s}' >"$OUT/$name-bytes.txt"
        rm -f "$OUT/$name.db" "$OUT/$name.db-wal" "$OUT/$name.db-shm"
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
        sqlite | mysql) one "$backend" small; one "$backend" full ;;
        *) echo "unknown backend $backend (sqlite, mysql)" >&2; exit 2 ;;
    esac
done
summary "$@" | tee "$OUT/summary.md"
