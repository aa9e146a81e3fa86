#!/bin/sh
# ab.sh OUT ROUNDS WORKLOAD BIN_A BIN_B: runs A and B alternating (A B A B ...),
# ROUNDS rounds, appending each run's JSON rows to OUT-A.jsonl / OUT-B.jsonl
# and its stderr (load, machine line, command) to OUT-A.err / OUT-B.err.
# WORKLOAD: mem | franz | w2mem | w2franz
out=$1 rounds=$2 wl=$3 a=$4 b=$5
case $wl in
mem)   args="-source mem -messages 1000000 -partitions 12 -keys 1000 -handler noop -mode key,unordered -concurrency 16 -serial=false -json" ;;
franz) args="-source embedded -client franz -messages 1000000 -partitions 12 -keys 1000 -handler noop -mode key,unordered -concurrency 16 -raw=true -serial=false -json" ;;
w2mem) args="-source mem -messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 16 -serial=false -raw=false -json" ;;
w2franz) args="-source embedded -client franz -messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 16 -serial=false -raw=false -json" ;;
esac
for i in $(seq "$rounds"); do
  for x in A B; do
    if [ $x = A ]; then bin=$a; else bin=$b; fi
    echo "# round $i $x load $(cut -d' ' -f1-3 /proc/loadavg) bin $bin" >>"$out-$x.err"
    $bin $args >>"$out-$x.jsonl" 2>>"$out-$x.err"
  done
done
