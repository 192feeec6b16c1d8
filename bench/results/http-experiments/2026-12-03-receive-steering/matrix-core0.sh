#!/bin/bash
export W=/dev/shm/bootfabric-http-bench.CuK7LY
BIN=/work/main/target/release/bootfabric
for round in 1 2 3; do
for row in "32 range 1" "32 image " "1 image "; do
  set -- $row; conns=$1; kind=$2; lua=${3:-}
  for srv in bootfabric nginx; do
    RPS=1 LUA=$lua PIN=1 CONNS=$conns DUR=8 bash probe.sh $srv $BIN | sed "s/^/$kind /"
  done
done; done
