#!/usr/bin/env bash
# Workloads 1 and 2 again, one round, with the code of b0c8a36 (a chain's
# first message promoted again as its queue doubles); the no-op rows of
# ../run.sh stand (handlers that quick promote nothing). Usage as ../run.sh:
#   go -C bench build -o /tmp/bench-promote .
#   bash bench/results/2026-12-06e/promote/run.sh /tmp/bench-promote "$KAFKA_BROKERS"
set -euo pipefail
BIN=$1 BROKERS=$2
OUT="$(cd "$(dirname "$0")" && pwd)"
run() { # name, args...
	local name=$1; shift
	{ date -u; uptime; nproc; echo "$BIN $*"; } >>"$OUT/$name.err"
	"$BIN" "$@" >>"$OUT/$name.jsonl" 2>>"$OUT/$name.err"
}
w1="-messages 10000 -partitions 1 -handler sleep:0ms-5ms -concurrency 100 -keys 1,10,100,1000,10000 -mode key -serial=false -raw=false -json"
w2="-messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 -handler sleep:1ms -mode key -concurrency 4,16,64 -serial=false -raw=false -json"
for client in franz confluent; do
	run w2-embedded-$client $w2 -source embedded -client $client
	run w2-kafka-$client $w2 -source kafka -brokers "$BROKERS" -client $client
	run w1-embedded-$client $w1 -source embedded -client $client
	run w1-kafka-$client $w1 -source kafka -brokers "$BROKERS" -client $client
done
run w2-mem $w2 -source mem
run w1-mem $w1 -source mem
