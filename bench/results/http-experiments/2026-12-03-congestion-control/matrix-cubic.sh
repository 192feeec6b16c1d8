#!/bin/bash
# Under cubic: corked to the end (BF_CORKTAIL=0) against the 256 KiB uncorked tail, and nginx,
# in turn: range:1 pinned and not, range:32 pinned, image:1 pinned; three rounds.
D=$(dirname "$0"); B=${B:-/work/exp-target/release/bootfabric}
for round in 1 2 3; do
  for row in "1 1 1" "0 1 1" "1 32 1" "1 1 "; do
    read -r pin conns lua <<<"$row"
    for t in 0 262144; do CC=cubic PIN=$pin CONNS=$conns LUA=$lua XENV="BF_CORKTAIL=$t" bash $D/probe.sh bootfabric $B | tail -1; done
    CC=cubic PIN=$pin CONNS=$conns LUA=$lua bash $D/probe.sh nginx x | tail -1
  done
done
