#!/bin/bash
# sendfile calls of each server during image:1 pinned (perf trace, 1 s): count, size distribution
set -u
W=$1; BIN=$2
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
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
