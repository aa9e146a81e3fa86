#!/usr/bin/env python3
# Prints sections 1 and 2 of bench/README.md from the .jsonl here:
# seconds (efficiency) per source and client, and msg/s for workload 2.
import collections, glob, json, os
os.chdir(os.path.dirname(os.path.abspath(__file__)))
cells = collections.defaultdict(dict)
for f in sorted(glob.glob("*.jsonl")):
    src = f[3:-6]
    for line in open(f):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        row = (f[:2], r["mode"], r["keys"], r["concurrency"])
        cells[row][src] = r
        assert r.get("duplicates") == 0 and r.get("order_violations") == 0, (f, row)
cols = ["mem", "mem-modes", "embedded-franz", "embedded-confluent", "kafka-franz", "kafka-confluent"]
for row in sorted(cells, key=lambda r: (r[0], r[1], r[2], r[3])):
    out = []
    for c in cols:
        r = cells[row].get(c)
        if r is None:
            continue
        if row[0] == "w1":
            out.append(f"{c} {r['seconds']:.3f} ({r['efficiency']:.3f})")
        else:
            out.append(f"{c} {r['efficiency']:.3f} ({r['msgs_per_sec']:,.0f})")
    print(row, " | ".join(out))
