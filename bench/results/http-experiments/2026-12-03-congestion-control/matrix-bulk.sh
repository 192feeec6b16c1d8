#!/bin/bash
# Under cubic, whole images: never corked (BF_CORKTAIL larger than any body) against the bulk
# corked but for the 256 KiB tail (as shipped), and nginx, in turn: image:1 pinned and not,
# image:32 pinned; three rounds.
D=$(dirname "$0"); B=${B:-/work/exp-target/release/bootfabric}
for round in 1 2 3; do
  for row in "1 1" "0 1" "1 32"; do
    read -r pin conns <<<"$row"
    for t in 1099511627776 262144; do CC=cubic PIN=$pin CONNS=$conns XENV="BF_CORKTAIL=$t" bash $D/probe.sh bootfabric $B | tail -1; done
    CC=cubic PIN=$pin CONNS=$conns bash $D/probe.sh nginx x | tail -1
  done
done
