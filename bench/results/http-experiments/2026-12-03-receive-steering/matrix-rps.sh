#!/bin/bash
BIN=/work/main/target/release/bootfabric
for round in 1 2; do
for pin in 1 0; do
for row in "1 image" "1 range" "32 range" "32 image"; do
  set -- $row; conns=$1; kind=$2
  if [ $kind = range ]; then url=http://10.77.0.1/rack/image.bin; lua=1; else url=http://10.77.0.1/rack/image.bin; lua=; fi
  for rps in 1 0; do
  for srv in bootfabric nginx; do
    RPS=$([ $rps = 1 ] && echo 1) LUA=$lua PIN=$pin CONNS=$conns DUR=6 bash probe.sh $srv $BIN | sed "s/^/$kind /"
  done; done
done; done; done
