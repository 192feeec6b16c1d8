#!/bin/bash
# One connection's 1 MiB ranges, pinned, 5 s per line: the latency distribution and both
# ends' tcp_info for each congestion control, corked to the end
# (BF_CORKTAIL=0) and with the 256 KiB uncorked tail; nginx in turn. Needs cubic allowed.
D=$(dirname "$0"); B=${B:-/work/exp-target/release/bootfabric}
for cc in bbr cubic; do
  for t in 0 262144 nginx; do
    if [ $t = nginx ]; then DUR=5 CC=$cc PIN=1 CONNS=1 LUA=1 bash $D/probe.sh nginx x | tail -1
    else DUR=5 CC=$cc PIN=1 CONNS=1 LUA=1 XENV="BF_CORKTAIL=$t" bash $D/probe.sh bootfabric $B | tail -1; fi
    sed -n '/Latency Distribution/,/99%/p' /tmp/probe/wrk.out; echo "server:"; cat /tmp/probe/ss-srv.txt; echo "client:"; cat /tmp/probe/ss-cli.txt; echo
  done
done
