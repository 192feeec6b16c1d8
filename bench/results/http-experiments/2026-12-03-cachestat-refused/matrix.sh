#!/bin/bash
# The page-cache check refused (as the packaged unit's seccomp filter refuses cachestat on
# systemd 252): every body spliced by io-wq workers, against the same binary asking cachestat.
# The image on ext4 (page cache warm), so the check is asked (tmpfs files never are).
export W=/work/probe-ws
cd /tmp/probe
for round in 1 2; do
  for row in "1 1 image" "1 1 range" "1 32 range" "0 1 image" "0 1 range"; do
    set -- $row
    lua=""; [ $3 = range ] && lua=1
    for x in BF_X=1 BF_NO_CACHESTAT=1; do
      r=$(XENV=$x LUA=$lua PIN=$1 CONNS=$2 bash probe.sh bootfabric /tmp/bf-knob 2>&1 | tail -1)
      echo "$3 $r"
    done
  done
done
