#!/usr/bin/env bash
# Soak: holds the S2 load (1000 connections, groups of 20, 1000 msg/s of 200
# characters) against one freshly started release server for a long time,
# sampling the server's RSS and the history database's size, and says whether
# RSS stayed flat once warmed up.
#
#   cargo build --release --bin next-chat-server --bin next-chat-bench
#   crates/bench/scripts/soak.sh [DURATION]        # 30m (default), 1800, 2m, 90s, 1h
#   BACKEND=mysql crates/bench/scripts/soak.sh 30m # Redis + MySQL instead of SQLite
#
# Settings (environment): OUT (/tmp/next-chat-soak), BIN (target/release),
# BACKEND (sqlite | mysql), INTERVAL (seconds between samples, 30), WARMUP
# (seconds, 300, at most a quarter of the run), NICE (niceness of server and
# bench, 0), PORT (5110), LOAD (the bench's load flags; S2's by default:
# "-c 1000 -g 20 -r 1000 -l 200").
#
# Writes $OUT/soak.csv (elapsed_s,rss_kib,db_bytes per sample), $OUT/bench.json
# (next-chat-bench's report) and $OUT/server.log, and prints a summary:
#   - RSS at the end of warm-up, then min / max / slope (least squares, MiB per
#     10 minutes) of the samples after it;
#   - database growth per minute (SQLite: the file plus its -wal; MySQL: the
#     database's data_length + index_length from information_schema, which
#     InnoDB refreshes when about a tenth of a table changed, so it grows in steps);
#   - PASS when RSS is flat after warm-up: no sample after it exceeds the value
#     at the end of warm-up by more than 10 % or 16 MiB, whichever is larger
#     (allocator arenas and the history writer's batches move RSS by a few MiB;
#     a leak of one record per message would add hundreds of MiB in 30 minutes),
#     and the bench lost nothing. FAIL exits 1.
#
# Needs Redis on 127.0.0.1:6379 and MariaDB on 127.0.0.1:3306 (root, no
# password) for BACKEND=mysql. Only loopback addresses are used.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${BIN:-$ROOT/target/release}
OUT=${OUT:-/tmp/next-chat-soak}
BACKEND=${BACKEND:-sqlite}
INTERVAL=${INTERVAL:-30}
NICE=${NICE:-0}
PORT=${PORT:-5110}
read -r -a LOAD <<<"${LOAD:--c 1000 -g 20 -r 1000 -l 200}"

# seconds DURATION: 1800, 90s, 30m, 1h -> seconds.
seconds() {
    case "$1" in
        *h) echo $(( ${1%h} * 3600 )) ;;
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
DURATION=$(seconds "${1:-30m}")
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -gt 0 ]] || { echo "bad duration '${1:-}'" >&2; exit 2; }
WARMUP=${WARMUP:-$(( DURATION / 4 < 300 ? DURATION / 4 : 300 ))}

mkdir -p "$OUT"
rm -f "$OUT/soak.csv" "$OUT/bench.json" "$OUT/server.log"
ulimit -n "$(ulimit -Hn)"
for bin in next-chat-server next-chat-bench; do
    [ -x "$BIN/$bin" ] || { echo "$BIN/$bin missing: cargo build --release --bin $bin" >&2; exit 2; }
done

SERVER=
BENCH=
DB=
cleanup() {
    for pid in $BENCH $SERVER; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    if [ "$BACKEND" = mysql ] && [ -n "$DB" ]; then
        mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB" || true
        redis-cli --scan --pattern "nc-soak-$DB:*" | xargs -r redis-cli del >/dev/null || true
    fi
}
trap cleanup EXIT

case "$BACKEND" in
    sqlite)
        DB_FILE="$OUT/soak.db"
        rm -f "$DB_FILE" "$DB_FILE-wal" "$DB_FILE-shm"
        FLAGS=(--database "sqlite://$DB_FILE")
        db_bytes() { stat -c %s "$DB_FILE" "$DB_FILE-wal" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'; }
        ;;
    mysql)
        DB="nc_soak_$$"
        mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB"
        FLAGS=(--redis redis://127.0.0.1:6379 --redis-key-prefix "nc-soak-$DB:"
            --database "mysql://root@127.0.0.1:3306/$DB" --migrate)
        db_bytes() {
            mariadb -uroot -h127.0.0.1 -N -e "SELECT COALESCE(SUM(data_length + index_length), 0)
                FROM information_schema.tables WHERE table_schema = '$DB'"
        }
        ;;
    *) echo "BACKEND must be sqlite or mysql" >&2; exit 2 ;;
esac

nice -n "$NICE" "$BIN/next-chat-server" --listen "127.0.0.1:$PORT" "${FLAGS[@]}" >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
    grep -q "^listening on" "$OUT/server.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "^listening on" "$OUT/server.log" || { echo "the server did not start:" >&2; cat "$OUT/server.log" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER/status"; }

echo "soak: ${LOAD[*]} for ${DURATION} s against $BACKEND (server pid $SERVER), sampling every ${INTERVAL} s, warm-up ${WARMUP} s; $OUT" >&2
nice -n "$NICE" "$BIN/next-chat-bench" --quiet --threads 1 --json \
    --url "http://127.0.0.1:$PORT/next-chat" "${LOAD[@]}" -d "$DURATION" -w 3 \
    --server-pid "$SERVER" >"$OUT/bench.json" &
BENCH=$!

START=$(date +%s.%N)
echo "elapsed_s,rss_kib,db_bytes" >"$OUT/soak.csv"
sample() {
    local now
    now=$(date +%s.%N)
    printf '%.0f,%s,%s\n' "$(echo "$now - $START" | bc)" "$(rss_kib)" "$(db_bytes)" >>"$OUT/soak.csv"
}
sample
next=$INTERVAL
while kill -0 "$BENCH" 2>/dev/null; do
    # Sleep in short steps so the end of the bench is noticed at once.
    sleep 1
    elapsed=$(echo "$(date +%s.%N) - $START" | bc)
    if [ "$(echo "$elapsed >= $next" | bc)" = 1 ]; then
        kill -0 "$SERVER" 2>/dev/null || { echo "the server died:" >&2; tail -20 "$OUT/server.log" >&2; exit 1; }
        sample
        next=$(( next + INTERVAL ))
    fi
done
BENCH_STATUS=0
wait "$BENCH" || BENCH_STATUS=$?
BENCH=
sample

python3 - "$OUT/soak.csv" "$OUT/bench.json" "$WARMUP" "$BENCH_STATUS" <<'PY'
import csv, json, sys

path, bench_path, warmup, bench_status = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rows = [(float(r["elapsed_s"]), int(r["rss_kib"]), int(r["db_bytes"])) for r in csv.DictReader(open(path))]
MIB = 1024.0

def fmt_mib(kib):
    return f"{kib / MIB:.1f} MiB"

# The warm-up ends at the first sample at or after WARMUP seconds.
base_index = next((i for i, r in enumerate(rows) if r[0] >= warmup), len(rows) - 1)
base_t, base_rss, _ = rows[base_index]
after = rows[base_index:]
rss_after = [r[1] for r in after]
lo, hi = min(rss_after), max(rss_after)

def slope(points):
    """Least-squares slope of (t, y), y per second."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0

rss_slope = slope([(t, rss) for t, rss, _ in after]) * 600  # KiB per 10 minutes
first, last = rows[0], rows[-1]
minutes = (last[0] - first[0]) / 60 or 1
db_growth = (last[2] - first[2]) / minutes
db_growth_after = (last[2] - after[0][2]) / (((last[0] - after[0][0]) / 60) or 1)
allowance = max(0.10 * base_rss, 16 * MIB)
flat = hi <= base_rss + allowance

try:
    report = json.load(open(bench_path))
except (OSError, ValueError):
    report = {}
load = report.get("load") or {}
lost = load.get("lost")
latency = load.get("latency_ms") or {}
server = report.get("server") or {}

print(f"samples: {len(rows)} over {last[0]:.0f} s ({path})")
print(f"RSS: start {fmt_mib(first[1])}, end of warm-up ({base_t:.0f} s) {fmt_mib(base_rss)}, "
      f"after warm-up min {fmt_mib(lo)} max {fmt_mib(hi)}, end {fmt_mib(last[1])}, "
      f"slope {rss_slope / MIB:+.2f} MiB per 10 min")
print(f"DB: start {first[2] / 2**20:.1f} MiB, end {last[2] / 2**20:.1f} MiB, "
      f"growth {db_growth / 2**20:.2f} MiB/min ({db_growth_after / 2**20:.2f} MiB/min after warm-up)")
print(f"bench: exit {bench_status}, sent {load.get('sent')}, delivered {load.get('delivered')} "
      f"of {load.get('expected')}, lost {lost}, p99 {latency.get('p99')} ms, "
      f"{server.get('cpu_us_per_delivery')} us of server CPU per delivery, "
      f"bench peak RSS {(report.get('bench') or {}).get('rss_peak_mib')} MiB")
verdict = flat and lost == 0 and bench_status == 0
print(f"RSS flat after warm-up (max <= {fmt_mib(base_rss)} + max(10 %, 16 MiB) = "
      f"{fmt_mib(base_rss + allowance)}): {'yes' if flat else 'NO'}; nothing lost: "
      f"{'yes' if lost == 0 and bench_status == 0 else 'NO'}")
print("PASS" if verdict else "FAIL")
sys.exit(0 if verdict else 1)
PY
