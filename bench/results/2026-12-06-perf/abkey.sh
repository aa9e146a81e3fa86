#!/bin/sh
# abkey.sh ROUNDS BIN... : key-mode mem runs alternating, prints per-binary cpu list
r=$1; shift
for i in $(seq $r); do for b in "$@"; do
  $b -source mem -messages 1000000 -partitions 12 -keys 1000 -handler noop -mode key -concurrency 16 -serial=false -raw=false -json 2>/dev/null | jq -r --arg b "$b" '"\($b) \(.cpu_us_per_msg) \(.msgs_per_sec|floor)"'
done; done | sort | awk '{a[$1]=a[$1]" "$2; s[$1]+=$2; n[$1]++} END {for (k in a) printf "%s mean %.3f :%s\n", k, s[k]/n[k], a[k]}'
