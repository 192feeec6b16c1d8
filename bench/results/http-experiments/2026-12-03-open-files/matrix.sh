#!/bin/bash
# A/B: base (HEAD 1784748) and kept (open files kept, cachestat skipped in memory), nginx in turn.
export W=/dev/shm/bootfabric-http-bench.9LID3M
cd /tmp/probe
for round in 1 2 3; do
  for cfg in "1 32" "0 32" "1 1" "0 1"; do
    set -- $cfg
    for s in base kept nginx; do
      if [ $s = nginx ]; then srv=nginx; bin=x; else srv=bootfabric; bin=/tmp/bf-$s; fi
      r=$(LUA=1 PIN=$1 CONNS=$2 bash probe.sh $srv $bin 2>&1 | tail -1)
      echo "$s $r"
    done
  done
done
