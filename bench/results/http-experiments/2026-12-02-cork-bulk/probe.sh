#!/bin/bash
# usage: run2.sh <bootfabric|nginx> <bin> ; env PIN=1|0 CONNS=N LUA=1 CHUNK=...
set -u
W=/dev/shm/bootfabric-http-bench.2cwtG6
S=bfp-srv; C=bfp-cli
ip netns del $S 2>/dev/null; ip netns del $C 2>/dev/null
ip netns add $S; ip netns add $C
ip link add fabric0 netns $S type veth peer name cli0 netns $C
ip -n $S addr add 10.77.0.1/24 dev fabric0; ip -n $S link set fabric0 up; ip -n $S link set lo up
ip -n $C addr add 10.77.0.2/24 dev cli0; ip -n $C link set cli0 up; ip -n $C link set lo up
cd $W
PIN=${PIN:-0}; CONNS=${CONNS:-1}
srvpin=(); clipin=()
[ $PIN = 1 ] && srvpin=(taskset -c 0) && clipin=(taskset -c 1)
if [ "$1" = bootfabric ]; then
  rm -rf $W/state/*
  ip netns exec $S env ${CORK:+BF_CORK=1} BF_X=1 "${srvpin[@]}" $2 serve --config $W/bootfabric-pin$PIN.toml 2>$W/bootfabric.log & P=$!
else
  ip netns exec $S "${srvpin[@]}" nginx -p $W/nginx -c $W/nginx/nginx-pin$PIN.conf 2>$W/nginx.log & P=$!
fi
sleep 2
if [ "$1" = nginx ]; then pids="$(pgrep -P $(cat $W/nginx/nginx.pid))"; else pids=$(pgrep -f "^$2 serve"); fi
cpu() { local t=0; for p in $pids; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
lua=(); [ -n "${LUA:-}" ] && lua=(-s $W/range.lua)
th=$((CONNS < 2 ? 1 : 2))
c0=$(cpu)
ip netns exec $C "${clipin[@]}" /usr/bin/time -f "wrk-cpu %U+%S" wrk -t$th -c$CONNS -d${DUR:-8}s --timeout 40s "${lua[@]}" ${URL:-http://10.77.0.1/rack/image.bin} > /tmp/probe/wrk.out 2>&1
c1=$(cpu)
echo "$1 cork=${CORK:-} pin=$PIN conns=$CONNS lua=${LUA:-} $(grep Transfer /tmp/probe/wrk.out) server-cpu $(( (c1-c0) ))ticks $(grep wrk-cpu /tmp/probe/wrk.out)"
kill $P 2>/dev/null; [ "$1" = nginx ] && kill $(cat $W/nginx/nginx.pid 2>/dev/null) 2>/dev/null; sleep 1
ip netns del $S; ip netns del $C
