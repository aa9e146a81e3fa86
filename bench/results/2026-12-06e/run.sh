#!/usr/bin/env bash
# The measurements of bench/README.md section 3 ("2026-12-06, evening:
# partitions interleaved, short chains ignored"): the no-op loops and
# workloads 1 and 2 on every source, with one harness binary, alternating
# the clients: the commands of 2026-12-06d/run.sh, with three rounds of the
# no-op loops and two of the workloads. Usage (from the repository root, a
# broker started with .ci/kafka.sh):
#   go -C bench build -o /tmp/bench-final .
#   bash bench/results/2026-12-06e/run.sh /tmp/bench-final "$KAFKA_BROKERS"
set -euo pipefail
BIN=$1 BROKERS=$2
OUT="$(cd "$(dirname "$0")" && pwd)"
noop="-messages 1000000 -partitions 12 -keys 1000 -handler noop -mode key,unordered -concurrency 16 -serial=false -json"
run() { # name, args...
	local name=$1; shift
	{ date -u; uptime; nproc; echo "$BIN $*"; } >>"$OUT/$name.err"
	"$BIN" "$@" >>"$OUT/$name.jsonl" 2>>"$OUT/$name.err"
}
for round in 1 2 3; do
	run noop-mem $noop -source mem
	run noop-kafka-franz $noop -source kafka -brokers "$BROKERS" -client franz -keep-topic noop1m -raw=true
	run noop-kafka-confluent $noop -source kafka -brokers "$BROKERS" -client confluent -keep-topic noop1m -raw=true
	run noop-embedded-franz $noop -source embedded -client franz -raw=true
	run noop-embedded-confluent $noop -source embedded -client confluent -raw=true
done
w1="-messages 10000 -partitions 1 -handler sleep:0ms-5ms -concurrency 100 -keys 1,10,100,1000,10000 -mode key -serial=false -raw=false -json"
w2="-messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 4,16,64 -serial=false -raw=false -json"
for round in 1 2; do
	for client in franz confluent; do
		run w1-embedded-$client $w1 -source embedded -client $client
		run w1-kafka-$client $w1 -source kafka -brokers "$BROKERS" -client $client
		run w2-embedded-$client $w2 -source embedded -client $client
		run w2-kafka-$client $w2 -source kafka -brokers "$BROKERS" -client $client
	done
	run w1-mem $w1 -source mem
	run w2-mem $w2 -source mem
done
