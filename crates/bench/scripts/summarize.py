#!/usr/bin/env python3
"""Summarizes the JSON reports of perf-series.sh: per scenario (and rate), each
run's figures and their median, as Markdown tables for docs/performance/runs.md."""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def figures(report):
    load = report.get("load") or {}
    server = report.get("server") or {}
    idle = report.get("idle") or {}
    lat = load.get("latency_ms") or {}
    send = load.get("send_completion_ms") or {}
    return {
        "expected": load.get("expected"),
        "delivered": load.get("delivered"),
        "lost": load.get("lost"),
        "dup": load.get("duplicated"),
        "ooo": load.get("out_of_order"),
        "deliv/s": load.get("deliveries_per_s"),
        "mean ms": lat.get("mean"),
        "p50 ms": lat.get("p50"),
        "p99 ms": lat.get("p99"),
        "p99.9 ms": lat.get("p999"),
        "max ms": lat.get("max"),
        "send p99 ms": send.get("p99"),
        "server cores": server.get("cores"),
        "µs/delivery": server.get("cpu_us_per_delivery"),
        "server RSS MiB": server.get("rss_max_mib"),
        "bench cores": (report.get("bench") or {}).get("cores"),
        "KiB/conn": idle.get("rss_per_connection_kib"),
        "connect s": (report.get("connect") or {}).get("total_s"),
    }


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/next-chat-perf")
    groups = defaultdict(list)
    for path in sorted(out.glob("*.json")):
        m = re.match(r"(.+)-(\d+)$", path.stem)
        if not m:
            continue
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        f = figures(report)
        mysql = path.with_suffix(".mysql")
        if mysql.exists():
            f["in MySQL"] = int(mysql.read_text().strip() or 0)
            f["accepted"] = (report.get("load") or {}).get("accepted_total")
        groups[m.group(1)].append((int(m.group(2)), f))
    def natural(item):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", item[0])]

    for name, runs in sorted(groups.items(), key=natural):
        runs.sort()
        keys = [k for k in runs[0][1] if any(r[1].get(k) is not None for r in runs)]
        print(f"\n### {name}\n")
        print("| | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        for run, f in runs:
            print(f"| run {run} | " + " | ".join(fmt(f.get(k)) for k in keys) + " |")
        medians = []
        for k in keys:
            values = [f[k] for _, f in runs if isinstance(f.get(k), (int, float))]
            medians.append(fmt(statistics.median(values)) if values else "–")
        print("| **median** | " + " | ".join(medians) + " |")


if __name__ == "__main__":
    main()
