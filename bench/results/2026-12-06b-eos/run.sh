#!/bin/bash
# Re-measures the exactly-once tables of bench/README.md with the code at
# HEAD: two rounds of tx against alo and Confluent PC on Apache Kafka, two
# on the embedded broker, then the paced latency runs, one each.
# usage: run.sh KAFKA_BROKERS   (from the repository root; harness built to /tmp/eosbench-bin)
set -u
B="$1"; OUT="$(dirname "$0")"; BIN=/tmp/eosbench-bin
go -C bench build -o "$BIN" . || exit 1
W="-messages 100000 -partitions 12 -keys 1000 -handler sleep:1ms -mode key -concurrency 64 -serial=false -raw=false"
P="-messages 30000 -partitions 12 -keys 1000 -handler sleep:1ms -mode key -concurrency 64 -serial=false -raw=false -input-rate 5000"
mline() { echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $*"; }
run() { # name args...
  local name=$1; shift
  mline "$BIN $*" >> "$OUT/$name.err"
  (cd bench && "$BIN" "$@" >> "../$OUT/$name.jsonl" 2>> "../$OUT/$name.err")
}
for r in 1 2; do
  run kafka-confluent -source kafka -brokers "$B" -client confluent -keep-topic eosbench-w100k $W -output tx,alo -json
  run kafka-franz     -source kafka -brokers "$B" -client franz     -keep-topic eosbench-w100k $W -output tx,alo -json
  mline "bench/pc/run.sh $B eosbench-w100k 100000 64 1000 100" >> "$OUT/kafka-pc.err"
  bash bench/pc/run.sh "$B" eosbench-w100k 100000 64 1000 100 >> "$OUT/kafka-pc.jsonl" 2>> "$OUT/kafka-pc.err"
done
for r in 1 2; do
  run embedded-confluent -source embedded -client confluent $W -output tx,alo -json
  run embedded-franz     -source embedded -client franz     $W -output tx,alo -json
done
for c in confluent franz; do
  run kafka-paced-$c    -source kafka -brokers "$B" -client $c $P -output tx,alo,tx,alo -json
  run embedded-paced-$c -source embedded -client $c $P -output tx,alo,tx,alo -json
done
