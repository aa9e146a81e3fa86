#!/bin/sh
# summary.sh FILE.jsonl...: per file and mode, the ranges of msg/s, CPU µs/msg,
# efficiency and the raw loop's, over the rows.
for f in "$@"; do
  jq -s -r --arg f "$f" 'group_by(.mode)[] | "\($f) \(.[0].mode) n=\(length) msg/s \([.[].msgs_per_sec]|min|floor)-\([.[].msgs_per_sec]|max|floor) cpu \([.[].cpu_us_per_msg]|min)-\([.[].cpu_us_per_msg]|max) eff \([.[].efficiency]|min)-\([.[].efficiency]|max) raw_cpu \([.[].raw_cpu_us_per_msg]|min)-\([.[].raw_cpu_us_per_msg]|max) viol \([.[].order_violations]|add) dup \([.[].duplicates]|add) committed \([.[].committed]|min)"' "$f"
done
