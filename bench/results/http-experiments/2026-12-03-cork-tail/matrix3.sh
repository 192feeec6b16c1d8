#!/bin/bash
B=$B_KNOB
for round in 1 2 3; do
for row in "1 32 1" "1 1 1" "0 32 1" "0 1 1" "1 1 " "0 1 "; do
 set -- $row; export PIN=$1 CONNS=$2 LUA=${3:-}
 [ -z "$LUA" ] && unset LUA
 XENV=BF_X=1 ./probe.sh bootfabric $B
 XENV="BF_CORKTAIL=262144 BF_CORKSPLIT=1" ./probe.sh bootfabric $B
 ./probe.sh nginx x
done; done
