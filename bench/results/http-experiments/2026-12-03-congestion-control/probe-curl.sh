#!/bin/bash
# usage: probe-curl.sh <bootfabric|nginx> <bin>; env PIN=1 N=20 CC=cubic|bbr W=<bench workspace>: N whole downloads by curl, one after another
set -u
W=${W:-/dev/shm/bootfabric-http-bench.nSyfMB}
S=bfp-srv; C=bfp-cli
ip netns del $S 2>/dev/null; ip netns del $C 2>/dev/null
ip netns add $S; ip netns add $C
ip link add fabric0 netns $S type veth peer name cli0 netns $C
ip -n $S addr add 10.77.0.1/24 dev fabric0; ip -n $S link set fabric0 up; ip -n $S link set lo up
ip -n $C addr add 10.77.0.2/24 dev cli0; ip -n $C link set cli0 up; ip -n $C link set lo up
[ -n "${CC:-}" ] && ip netns exec $S sysctl -qw net.ipv4.tcp_congestion_control=$CC && ip netns exec $C sysctl -qw net.ipv4.tcp_congestion_control=$CC
cd $W; PIN=${PIN:-1}
srvpin=(); clipin=()
[ $PIN = 1 ] && srvpin=(taskset -c 0) && clipin=(taskset -c 1)
if [ "$1" = bootfabric ]; then rm -rf $W/state/*
  ip netns exec $S env ${XENV:-BF_X=1} "${srvpin[@]}" $2 serve --config $W/bootfabric-pin$PIN.toml 2>$W/bootfabric.log & P=$!
else ip netns exec $S "${srvpin[@]}" nginx -p $W/nginx -c $W/nginx/nginx-pin$PIN.conf 2>$W/nginx.log & P=$!; fi
sleep 2
if [ "$1" = nginx ]; then pids="$(pgrep -P $(cat $W/nginx/nginx.pid))"; else pids=$P; fi
cpu() { local t=0; for p in $pids; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
c0=$(cpu)
for i in $(seq ${N:-20}); do ip netns exec $C "${clipin[@]}" curl -sS -o /dev/null -w '%{time_connect} %{time_starttransfer} %{time_total} %{speed_download}\n' http://10.77.0.1/rack/image.bin; done > /tmp/probe/curl.out
c1=$(cpu)
echo "$1 ${XENV:-} pin=$PIN $(awk '{c+=$1; s+=$2; t+=$3; v+=$4} END {printf "connect %.2fms ttfb %.2fms total %.1fms rate %.0f MiB/s", c/NR*1000, s/NR*1000, t/NR*1000, v/NR/1048576}' /tmp/probe/curl.out) server-ticks $((c1-c0))"
kill $P 2>/dev/null; [ "$1" = nginx ] && kill $(cat $W/nginx/nginx.pid 2>/dev/null) 2>/dev/null; sleep 1
ip netns del $S; ip netns del $C
