#!/usr/bin/env bash
# bench/pc/run.sh - Confluent Parallel Consumer's transactional mode on the
# bench's workload (see bench/README.md, "Exactly-once").
#
#   bash bench/pc/run.sh BROKERS INPUT_TOPIC [MESSAGES] [CONCURRENCY] [SLEEP_US] [COMMIT_MS]
#
# INPUT_TOPIC must hold MESSAGES (default 100000) records: the Go harness
# loads and keeps one with `-keep-topic NAME`. PC reads it in a fresh group
# (ProcessingOrder.KEY, CommitMode.PERIODIC_TRANSACTIONAL_PRODUCER,
# maxConcurrency CONCURRENCY, default 64), sleeps SLEEP_US (default 1000)
# per record and produces one output per input with pollAndProduce to a new
# topic INPUT_TOPIC-pc-out-<time>; a read_committed reader counts the
# outputs. One JSON line on stdout. Needs Java 17+ and Maven (the
# dependencies come from Maven Central).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
BROKERS="${1:?brokers}"
IN="${2:?input topic}"
MESSAGES="${3:-100000}"
CONC="${4:-64}"
SLEEP_US="${5:-1000}"
COMMIT_MS="${6:-100}"
OUT="$IN-pc-out-$(date +%s)"
cd "$DIR"
if [[ ! -f target/cp.txt || ! -d target/classes || pom.xml -nt target/cp.txt || src/main/java/bench/PcBench.java -nt target/classes ]]; then
  mvn -q -B compile dependency:build-classpath -Dmdep.outputFile=target/cp.txt >&2
fi
PC_VERSION="$(sed -n 's:.*<pc.version>\(.*\)</pc.version>.*:\1:p' pom.xml)"
exec java -Xmx1g -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dpc.version="$PC_VERSION" \
  -cp "target/classes:$(cat target/cp.txt)" bench.PcBench \
  "$BROKERS" "$IN" "$OUT" "$MESSAGES" "$CONC" "$SLEEP_US" "$COMMIT_MS"
