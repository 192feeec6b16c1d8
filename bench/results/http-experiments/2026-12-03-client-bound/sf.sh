#!/bin/bash
# sendfile calls of each server during image:1 pinned (perf trace, 1 s): count, size distribution
set -u
W=$1; BIN=$2
S=bfp-srv; C=bfp-cli
cleanup() { ip netns del $S 2>/dev/null; ip netns del $C 2>/dev/null; }
trap cleanup EXIT
cleanup
ip netns add $S; ip netns add $C
ip link add fabric0 netns $S type veth peer name cli0 netns $C
ip -n $S addr add 10.77.0.1/24 dev fabric0; ip -n $S link set fabric0 up; ip -n $S link set lo up
ip -n $C addr add 10.77.0.2/24 dev cli0; ip -n $C link set cli0 up; ip -n $C link set lo up
ip netns exec $C sh -c 'echo 2 > /sys/class/net/cli0/queues/rx-0/rps_cpus'
ip netns exec $S sh -c 'echo 1 > /sys/class/net/fabric0/queues/rx-0/rps_cpus'
cd "$W"
for v in bootfabric nginx; do
  if [ $v = bootfabric ]; then rm -rf "$W"/state/*; ip netns exec $S taskset -c 0 "$BIN" serve --config "$W/bootfabric-pin1.toml" 2>"$W/bootfabric.log" & P=$!; pids=$P
  else ip netns exec $S taskset -c 0 nginx -p "$W/nginx" -c "$W/nginx/nginx-pin1.conf" 2>"$W/nginx.log" & P=$!; fi
  sleep 2
  [ $v = nginx ] && pids=$(pgrep -P "$(cat $W/nginx/nginx.pid)" | tr '\n' ',' | sed 's/,$//')
  ip netns exec $C taskset -c 1 wrk -t1 -c1 -d6s --timeout 40s http://10.77.0.1/rack/image.bin > /tmp/probe/sf-wrk-$v.txt 2>&1 & WP=$!
  sleep 2
  timeout -s INT 1 perf trace -e sendfile,writev,sendmsg,setsockopt -p "$pids" -o /tmp/probe/sf-$v.txt 2>/dev/null
  wait $WP
  if [ $v = bootfabric ]; then kill $P; wait $P 2>/dev/null; else kill "$(cat $W/nginx/nginx.pid)"; wait $P 2>/dev/null; sleep 0.5; fi
done
