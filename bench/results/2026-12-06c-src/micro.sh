#!/bin/sh
# micro.sh OUT ROUNDS ROOT_A ROOT_B FRANZ_A FRANZ_B: the Go benchmarks, A and B
# alternating, ROUNDS rounds, into OUT (one line per benchmark result).
# ROOT_x: go test -c of the root package; FRANZ_x: go test -c of ./kafka/franz
# (with kafka/franz/take_internal_test.go copied into A's tree).
out=$1 rounds=$2 ra=$3 rb=$4 fa=$5 fb=$6
for i in $(seq "$rounds"); do
  for cpu in 1 2; do
    for x in A B; do
      if [ $x = A ]; then bin=$ra; else bin=$rb; fi
      echo "# round $i $x cpu $cpu load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"
      $bin -test.run '^$' -test.bench 'BenchmarkPipelineNoop/(key|unordered)$' -test.benchtime 2000000x -test.cpu $cpu | grep '^Benchmark' | sed "s/^/$x /" >>"$out"
    done
  done
  for x in A B; do
    if [ $x = A ]; then bin=$fa; else bin=$fb; fi
    $bin -test.run '^$' -test.bench 'BenchmarkTakeMessages' -test.benchtime 5000000x -test.cpu 1 | grep '^Benchmark' | sed "s/^/$x /" >>"$out"
  done
done
