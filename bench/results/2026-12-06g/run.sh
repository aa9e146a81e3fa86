#!/usr/bin/env bash
# bench/README.md sections 1 and 2 with the code of 2026-12-06 (late
# evening): workload 1 (Parallel Consumer's) and workload 2 (Zipf, 4 to 256
# handlers) on every source, both clients. Usage (from the repository root,
# a broker started with .ci/kafka.sh):
#   go -C bench build -o /tmp/bench-now .
#   bash bench/results/2026-12-06g/run.sh /tmp/bench-now "$KAFKA_BROKERS"
#   python3 bench/results/2026-12-06g/summary.py
set -euo pipefail
BIN=$1 BROKERS=$2
OUT="$(cd "$(dirname "$0")" && pwd)"
run() { # name, args...
	local name=$1; shift
	{ date -u; uptime; nproc; echo "$BIN $*"; } >>"$OUT/$name.err"
	"$BIN" "$@" >>"$OUT/$name.jsonl" 2>>"$OUT/$name.err"
}
w1="-messages 10000 -partitions 1 -handler sleep:0ms-5ms -concurrency 100 -mode key -serial=false -raw=false -json"
w2="-messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 4,8,16,32,64,128,256 -serial=false -raw=false -json"
run w1-mem $w1 -keys 1,2,5,10,20,50,100,1000,10000 -source mem
run w1-mem-modes -messages 10000 -partitions 1 -handler sleep:0ms-5ms -concurrency 100 -keys 1000 -mode partition,unordered -serial=false -raw=false -json -source mem
run w2-mem $w2 -source mem
for client in franz confluent; do
	run w1-embedded-$client $w1 -keys 1,10,100,1000,10000 -source embedded -client $client
	run w1-kafka-$client $w1 -keys 1,10,100,1000,10000 -source kafka -brokers "$BROKERS" -client $client
	run w2-embedded-$client $w2 -source embedded -client $client
	run w2-kafka-$client $w2 -source kafka -brokers "$BROKERS" -client $client
done
# Workload 2 with 1 and 2 handlers (bound by the total work; 1-2 minutes a
# run), run after the rest:
w2slow="-messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 1,2 -serial=false -raw=false -json"
run w2-mem $w2slow -source mem
for client in franz confluent; do
	run w2-embedded-$client $w2slow -source embedded -client $client
	run w2-kafka-$client $w2slow -source kafka -brokers "$BROKERS" -client $client
done
