#!/usr/bin/env bash
# Chaos soak: the chaos test (crates/server/tests/chaos.rs) run for a long
# time. Two instances share Redis and MariaDB through proxies of the test's
# own; members on both send without pause while users connect, join, leave and
# disconnect (churn), and every few seconds a fault comes in turn: Redis
# connections reset, MariaDB cut for 2 s, the clients' connections reset (they
# reconnect and catch up by id), Redis cut for 1.5 s. At the end MariaDB is cut,
# one instance is SIGKILLed with what it accepted unstored, and MariaDB comes
# back. The test fails if a message whose send completed is not stored, is
# stored twice, or did not reach (once) every member that stayed joined.
#
#   cargo build --workspace --bins
#   crates/bench/scripts/chaos-soak.sh             # one hour
#   DURATION=120 crates/bench/scripts/chaos-soak.sh
#
# Env: DURATION (seconds of traffic and faults, 3600), OUT (/tmp/next-chat-chaos).
# Needs Redis on 127.0.0.1:6379 and MariaDB on 127.0.0.1:3306 (root, no
# password); the test uses its own key prefix and database and removes them.
#
# Writes $OUT/chaos.log (the test's output) and $OUT/rss.csv
# (elapsed_s,sends_completed,churns,rss_kib_a,rss_kib_b per fault round), and
# prints RSS at the first and last round and its peak, the sends completed,
# the lost and duplicated messages, and PASS or FAIL (exit 1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
DURATION=${DURATION:-3600}
OUT=${OUT:-/tmp/next-chat-chaos}
mkdir -p "$OUT"
cd "$ROOT"

status=0
CHAOS_SECS=$DURATION cargo test -p next-chat-server --test chaos -- --nocapture \
    >"$OUT/chaos.log" 2>&1 || status=$?

echo "elapsed_s,sends_completed,churns,rss_kib_a,rss_kib_b" >"$OUT/rss.csv"
sed -n 's/^chaos: round [0-9]* at \([0-9]*\) s: \([0-9]*\) sends completed, \([0-9]*\) churns, rss_kib \([0-9]*\) \([0-9]*\)$/\1,\2,\3,\4,\5/p' \
    "$OUT/chaos.log" >>"$OUT/rss.csv"

rounds=$(($(wc -l <"$OUT/rss.csv") - 1))
echo "fault rounds: $rounds over ${DURATION}s (log: $OUT/chaos.log, samples: $OUT/rss.csv)"
if [ "$rounds" -gt 0 ]; then
    awk -F, 'NR == 2 { first = $4 } NR > 1 { last = $4; if ($4 > peak) peak = $4 }
        END { printf "RSS of the surviving instance: first round %.1f MiB, last %.1f MiB, peak %.1f MiB\n",
              first / 1024, last / 1024, peak / 1024 }' "$OUT/rss.csv"
fi
grep '^chaos: done' "$OUT/chaos.log" || true
if [ "$status" -eq 0 ]; then
    echo PASS
else
    grep -E "panicked|assert" "$OUT/chaos.log" | head -5 || true
    echo FAIL
    exit 1
fi
