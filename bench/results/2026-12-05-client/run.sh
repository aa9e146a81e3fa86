#!/bin/sh
# Alternating confluent/franz, 2 rounds each, on the source given as $@.
# usage: sh run.sh NAME -source embedded   (from bench/results/2026-12-05-client)
name=$1; shift
for round in 1 2; do
  for client in confluent franz; do
    out=$name-$client-$round
    uptime > $out.err
    /tmp/wtbench-bin "$@" -client $client -messages 1000000 -partitions 12 -keys 1000 -handler noop -mode key,unordered -concurrency 16 -raw=true -serial=false -json -progress=false > $out.jsonl 2>> $out.err
  done
done
