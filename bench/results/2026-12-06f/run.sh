#!/usr/bin/env bash
# The measurements of bench/README.md section 3c's "max.partition.fetch.bytes"
# rows: kafka.NewConsumer's new 256 KiB (the harness's default since this
# commit) against librdkafka's 1 MiB (-X), alternating, on the no-op loop
# (Apache Kafka, raw loop and Parallafka, key order) and on workload 2 at 16
# handlers (the embedded broker, where 1 MiB read the hot key's partition
# last in about half the runs), then workloads 1 and 2 over confluent with
# the new default on both brokers. Usage (from the repository root, a broker
# started with .ci/kafka.sh):
#   go -C bench build -o /tmp/bench-mpfb .
#   bash bench/results/2026-12-06f/run.sh /tmp/bench-mpfb "$KAFKA_BROKERS"
set -euo pipefail
BIN=$1 BROKERS=$2
OUT="$(cd "$(dirname "$0")" && pwd)"
run() { # name, args...
	local name=$1; shift
	{ date -u; uptime; nproc; echo "$BIN $*"; } >>"$OUT/$name.err"
	"$BIN" "$@" >>"$OUT/$name.jsonl" 2>>"$OUT/$name.err"
}
mib="-X max.partition.fetch.bytes=1048576"
noop="-messages 1000000 -partitions 12 -keys 1000 -handler noop -mode key -concurrency 16 -serial=false -json -source kafka -brokers $BROKERS -keep-topic noop1m -raw=true"
w2c16="-messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 16 -serial=false -raw=false -json -source embedded -client confluent"
for round in 1 2 3 4; do
	run noop-kafka-confluent-1mib $noop -client confluent $mib
	run noop-kafka-confluent-256kib $noop -client confluent
	run noop-kafka-franz $noop -client franz
done
for round in 1 2 3 4 5; do
	run w2c16-embedded-confluent-1mib $w2c16 $mib
	run w2c16-embedded-confluent-256kib $w2c16
done
w1="-messages 10000 -partitions 1 -handler sleep:0ms-5ms -concurrency 100 -keys 1,10,100,1000,10000 -mode key -serial=false -raw=false -json"
w2="-messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 4,16,64 -serial=false -raw=false -json"
run w2-kafka-confluent $w2 -source kafka -brokers "$BROKERS" -client confluent
run w2-embedded-confluent $w2 -source embedded -client confluent
run w1-kafka-confluent $w1 -source kafka -brokers "$BROKERS" -client confluent
run w1-embedded-confluent $w1 -source embedded -client confluent
