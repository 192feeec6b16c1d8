#!/bin/bash
# A/B on whole images (image:1, one connection): base (1784748) and kept (53a81ec), nginx in turn.
export W=/dev/shm/bootfabric-http-bench.9LID3M
cd /tmp/probe
for round in 1 2 3; do
  for pin in 1 0; do
    for s in base kept nginx; do
      if [ $s = nginx ]; then srv=nginx; bin=x; else srv=bootfabric; bin=/tmp/bf-$s; fi
      r=$(PIN=$pin CONNS=1 bash probe.sh $srv $bin 2>&1 | tail -1)
      echo "$s $r"
    done
  done
done
