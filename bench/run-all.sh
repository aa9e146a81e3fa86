#!/usr/bin/env bash
# Runs every workload of bench/README.md, one after another, writing one
# JSON line per run to bench/results/<name>.jsonl (stderr, with the machine
# and the exact command, to <name>.log), the chart to bench/throughput.png,
# and the testing.B micro-benchmarks to bench/results/microbench.txt.
# Run it on a quiet machine: it takes about 50 minutes on 2 cores (the
# adaptive-concurrency sweep alone about 20).
#
#	bash bench/run-all.sh            # everything
#	bash bench/run-all.sh w2 w3-mem  # only the named runs
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
bin=$(mktemp -d)/parallafka-bench
go -C bench build -o "$bin" .  # bench is a module of its own

want() { [ $# -eq 0 ] || [[ " $* " == *" $name "* ]]; }
only=("$@")
run() {
	name=$1
	shift
	want "${only[@]}" || return 0
	echo "== $name: go -C bench run . $*" >&2
	echo "# load before: $(uptime)" >"$out/$name.log"
	"$bin" "$@" -json >"$out/$name.jsonl" 2>>"$out/$name.log"
	echo "# load after: $(uptime)" >>"$out/$name.log"
}

w1="-messages 10000 -partitions 1 -handler sleep:0ms-5ms -concurrency 100"
# 1. Confluent Parallel Consumer's table: key mode over 1..10,000 keys (the
# serial baseline measured once, on 1 key), partition and unordered modes.
run w1-key-mem -source mem $w1 -keys 1,2,5,10,20,50,100,1000,10000 -mode key -serial=false
run w1-serial-mem -source mem $w1 -keys 1 -mode key
run w1-modes-mem -source mem $w1 -keys 1000 -mode partition,unordered -serial=false
run w1-key-embedded -source embedded $w1 -keys 1,2,5,10,20,50,100,1000,10000 -mode key -serial=false -raw=false
run w1-modes-embedded -source embedded $w1 -keys 1000 -mode partition,unordered -serial=false -raw=false

# 2. Zipf-skewed keys (and uniform ones for contrast), 1 ms handler, 12
# partitions, concurrency 1-256; the chart; then the zipf sweep's weak spot
# again with a larger in-flight window.
run w2 -source mem -messages 100000 -partitions 12 -keys 10000 -dist zipf,uniform -zipf-s 1.1 \
	-handler sleep:1ms -mode key -concurrency 1,2,4,8,16,32,64,128,256 -plot bench/throughput.png
run w2-window -source mem -messages 100000 -partitions 12 -keys 10000 -dist zipf -zipf-s 1.1 \
	-handler sleep:1ms -mode key -concurrency 4,8,16 -max-in-flight 20000 -serial=false

# 3. No-op handler, 1,000,000 messages: pipeline cost, and the raw
# confluent-kafka-go loop on the embedded broker.
run w3-mem -source mem -messages 1000000 -partitions 12 -keys 10000 -handler noop -mode key,partition,unordered -concurrency 16
# A small topic, which the client prefetches whole while the group forms:
# the raw loop then drains it at memory speed and the pipeline is the limit.
run w3-embedded-prefetched -source embedded -messages 50000 -partitions 4 -keys 1000 -handler noop -mode key,partition,unordered -concurrency 16
for i in 1 2 3; do # the embedded broker's feed rate varies from run to run
	run w3-embedded-$i -source embedded -messages 1000000 -partitions 12 -keys 10000 -handler noop -mode key,partition,unordered -concurrency 16
done

# 4. Memory: a backlog of 1,000,000 messages of 1 KB and a slow handler; each
# run stops after 200,000. -retained holds the handlers halfway until the
# in-flight limit is reached and measures the live heap the pipeline keeps
# (two forced GCs); peak heap and RSS are sampled too. The same with a
# backlog of 200,000, and with in-flight limits of 100 and 10,000: the
# retained heap follows the limit, not the backlog.
w4="-source embedded -messages 200000 -value-size 1024 -partitions 12 -keys 10000 -handler sleep:1ms -concurrency 100 -serial=false -raw=false -retained"
run w4-backlog-1m $w4 -backlog 1000000
run w4-backlog-200k $w4 -backlog 200000
run w4-backlog-1m-inflight-100 $w4 -backlog 1000000 -max-in-flight 100
run w4-backlog-1m-inflight-10k $w4 -backlog 1000000 -max-in-flight 10000

# 5. Adaptive concurrency (issue #13): a simulated downstream of 32 calls
# at a time, 2 ms each, shedding beyond 64; a sweep of fixed concurrencies
# and WithAdaptiveConcurrency(1, 512), the same on the embedded broker, and
# capacity changes with their timelines charted (bench/adaptive-*.png).
ds="-keys 1000 -handler downstream:cap=32,base=2ms,fail=2 -serial=false"
run adaptive-sweep-mem -source mem -messages 200000 $ds -concurrency 1,2,4,8,16,32,64,128,256,512,adaptive:1-512
run adaptive-embedded -source embedded -messages 200000 $ds -raw=false -concurrency 32,64,adaptive:1-512
run adaptive-32to8 -source mem -messages 80000 $ds -downstream-change 3s:cap=8 -concurrency 8,12,32,adaptive:1-512 -timeline "$out/adaptive-32to8.csv" -timeline-plot bench/adaptive-32to8.png
run adaptive-8to32 -source mem -messages 80000 -keys 1000 -handler downstream:cap=8,base=2ms,fail=2 -serial=false -downstream-change 3s:cap=32 -concurrency 32,64,adaptive:1-512 -timeline "$out/adaptive-8to32.csv" -timeline-plot bench/adaptive-8to32.png

name=microbench
if want "${only[@]}"; then
	echo "== micro-benchmarks: go test -run '^$' -bench . -benchmem -count 3 ./internal/engine . ./bench (a module of its own)" >&2
	{
		go test -run '^$' -bench . -benchmem -count 3 ./internal/engine .
		go -C bench test -run '^$' -bench . -benchmem -count 3 .
	} >"$out/microbench.txt" 2>&1
fi
