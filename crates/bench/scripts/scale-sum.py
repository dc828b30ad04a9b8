#!/usr/bin/env python3
"""Adds up the reports of scale-connections.sh's server+bench pairs.

    scale-sum.py OUT/NAME PAIRS   reads OUT/NAME-p0.json ..., writes OUT/NAME.json

Connections, RSS growth, CPU and deliveries are summed; the accept rate is all
connections over the slowest pair's connect time (the pairs start together);
latency percentiles cannot be merged from summaries, so the report gives the
pairs' median and highest p99.
"""
import json
import statistics
import sys

prefix, pairs = sys.argv[1], int(sys.argv[2])
reports = []
for p in range(pairs):
    try:
        reports.append(json.load(open(f"{prefix}-p{p}.json")))
    except (OSError, ValueError) as e:
        print(f"pair {p}: no report ({e})")
        sys.exit(1)

conns = sum(r["config"]["connections"] for r in reports)
connect_s = max(r["connect"]["total_s"] for r in reports)
bench_rss_kib = sum(r["bench"]["rss_per_connection_kib"] * r["config"]["connections"] for r in reports)
out = {
    "pairs": pairs,
    "connections": conns,
    "connect_s": connect_s,
    "accept_per_s": conns / connect_s,
    "connect_p99_ms": max(r["connect"]["per_connection_ms"]["p99"] for r in reports),
    "bench_rss_per_connection_kib": bench_rss_kib / conns,
    "bench_rss_peak_mib": sum(r["bench"]["rss_peak_mib"] for r in reports),
    "bench_cores": sum(r["bench"]["cores"] for r in reports),
    "server_cores": sum(r["server"]["cores"] for r in reports),
    "server_rss_max_mib": sum(r["server"]["rss_max_mib"] for r in reports),
    "errors": [e for r in reports for e in r["errors"]],
}
if all(r.get("idle") for r in reports):
    grown = sum((r["idle"]["rss_after_mib"] - r["idle"]["rss_before_mib"]) * 1024 for r in reports)
    out["server_rss_per_connection_kib"] = grown / conns
if all(r.get("load") for r in reports):
    loads = [r["load"] for r in reports]
    delivered = sum(l["delivered"] for l in loads)
    cpu_s = sum(r["server"]["cpu_s"] for r in reports)
    p99s = [l["latency_ms"]["p99"] for l in loads]
    out.update({
        "sent": sum(l["sent"] for l in loads),
        "expected": sum(l["expected"] for l in loads),
        "delivered": delivered,
        "lost": sum(l["lost"] for l in loads),
        "connections_lost": sum(l["connections_lost"] for l in loads),
        "deliveries_per_s": sum(l["deliveries_per_s"] for l in loads),
        "p50_ms_median": statistics.median(l["latency_ms"]["p50"] for l in loads),
        "p99_ms_median": statistics.median(p99s),
        "p99_ms_max": max(p99s),
        "server_cpu_us_per_delivery": cpu_s * 1e6 / delivered if delivered else None,
        "send_lag_p99_ms_max": max(l["send_lag_ms"]["p99"] for l in loads),
    })
json.dump(out, open(f"{prefix}.json", "w"), indent=2)
print(json.dumps(out))
