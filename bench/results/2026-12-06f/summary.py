#!/usr/bin/env python3
# Prints the rows of every .jsonl here: msg/s and CPU µs per message (with
# the raw loop's) and RSS growth for the no-op runs; efficiency and when
# the hot key's first message was polled for workloads 1 and 2.
import glob, json, os
os.chdir(os.path.dirname(os.path.abspath(__file__)))
for f in sorted(glob.glob("*.jsonl")):
    for line in open(f):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if f.startswith("noop"):
            raw = r.get("raw_msgs_per_sec") or 0
            print(f"{f:34} {r['msgs_per_sec']/1e3:6.0f}k {r['cpu_us_per_msg']:5.2f} µs  raw {raw/1e3:6.0f}k {r.get('raw_cpu_us_per_msg') or 0:5.2f} µs  ratio {r['msgs_per_sec']/raw if raw else 0:4.2f}  rss+ {(r.get('peak_rss_bytes', 0) - r.get('base_rss_bytes', 0))/2**20:4.0f} MB  dup {r.get('duplicates')} ord {r.get('order_violations')}")
        else:
            print(f"{f:34} keys {r['keys']:6} conc {r['concurrency']:4} {r['seconds']:7.3f} s  eff {r.get('efficiency', 0):.3f}  hot first {r.get('hot_key_first_seconds', 0):.2f} s  dup {r.get('duplicates')} ord {r.get('order_violations')}")
