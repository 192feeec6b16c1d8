#!/bin/bash
B=$B_KNOB
for round in 1 2; do
for row in "1 32" "1 1" "0 32" "0 1"; do
 set -- $row; export PIN=$1 CONNS=$2 LUA=1
 XENV=BF_X=1 ./probe.sh bootfabric $B
 XENV=BF_CORKTAIL=0 ./probe.sh bootfabric $B
 XENV="BF_CORKTAIL=65536 BF_CORKSPLIT=1" ./probe.sh bootfabric $B
 XENV="BF_CORKTAIL=262144 BF_CORKSPLIT=1" ./probe.sh bootfabric $B
 XENV=BF_CORKBUSY=2 ./probe.sh bootfabric $B
 ./probe.sh nginx x
done; done
