#!/bin/bash
# The 256 KiB uncorked tail (default) against corked to the end (BF_CORKTAIL=0), nginx in turn,
# under receive steering (RPS=1), host bbr. Binary: corktail-knob.diff on b73ede6's daemon code.
export W=/dev/shm/bootfabric-http-bench.CuK7LY
BIN=/tmp/bf-knob
for round in 1 2 3; do
for pin in 1 0; do
for row in "1 range 1" "32 range 1" "1 image "; do
  set -- $row; conns=$1; kind=$2; lua=${3:-}
  XENV=BF_TAIL=256k RPS=1 LUA=$lua PIN=$pin CONNS=$conns DUR=8 bash probe.sh bootfabric $BIN | sed "s/^/$kind /"
  XENV=BF_CORKTAIL=0 RPS=1 LUA=$lua PIN=$pin CONNS=$conns DUR=8 bash probe.sh bootfabric $BIN | sed "s/^/$kind /"
  RPS=1 LUA=$lua PIN=$pin CONNS=$conns DUR=8 bash probe.sh nginx $BIN | sed "s/^/$kind /"
done; done; done
