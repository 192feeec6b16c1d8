#!/bin/bash
# Ring splice experiment: sendfile on the ring (sf), file -> pipe -> socket spliced on the ring
# (rs), the same corked to the end (rsc), and nginx, in turn.
export W=$1
cd /tmp/probe
for round in 1 2; do
  for row in "1 32 range" "0 32 range" "1 1 range" "1 1 image"; do
    set -- $row
    lua=""; [ $3 = range ] && lua=1
    for v in sf rs rsc nginx; do
      case $v in
        sf) x="BF_X=1";; rs) x="BF_RINGSPLICE=1";; rsc) x="BF_RINGSPLICE=1 BF_CORKALL=1";;
      esac
      if [ $v = nginx ]; then srv=nginx; else srv=bootfabric; fi
      r=$(XENV="$x" LUA=$lua PIN=$1 CONNS=$2 bash probe.sh $srv /tmp/bf-rs 2>&1 | tail -1)
      echo "$3 $v $r"
    done
  done
done
