#!/bin/bash
# usage: client.sh <workdir> <bootfabric-bin> <rounds> ; image:1 pinned under RPS (server CPU 0,
# wrk CPU 1), Bootfabric and nginx alternating: per run the rate, wrk's read() calls and bytes
# per call, CPU 1's busy time per GiB by part; PERF=1 adds a 3 s profile of CPU 1 per server.
set -u
W=$1; BIN=$2; ROUNDS=$3; DUR=${DUR:-8}; OUT=${OUT:-/tmp/probe/client}
mkdir -p "$OUT"
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
ticks() { awk '$1=="cpu1"{print $2+$3+$4+$7+$8, $8, $4, $7, $9}' /proc/stat; }
one() { # name round, start command...
  local name=$1 round=$2; shift 2
  "$@" & local P=$!
  sleep 2
  local pp=""
  if [ -n "${PERF:-}" ]; then
    (sleep 3; perf record -q -C 1 -o "$OUT/perf-$name-$round.data" -- sleep 3 >/dev/null 2>&1) & pp=$!
  fi
  read -r b0 s0 y0 i0 t0 <<<"$(ticks)"
  out=$(ip netns exec $C taskset -c 1 perf stat -x, -e 'syscalls:sys_enter_read,syscalls:sys_enter_ioctl,syscalls:sys_enter_epoll_wait' \
    wrk -t1 -c1 -d"${DUR}s" --timeout 40s http://10.77.0.1/rack/image.bin 2>&1)
  read -r b1 s1 y1 i1 t1 <<<"$(ticks)"
  [ -n "$pp" ] && wait "$pp"
  local gib reads ioctls waits
  gib=$(echo "$out" | awk '/requests in/ {v=$5; sub(/,$/,"",v); u=v; gsub(/[0-9.]/,"",u); sub(/[A-Z]+$/,"",v); m=(u=="GB")?1:(u=="MB"?1/1024:1/1048576); print v*m}')
  reads=$(echo "$out" | awk -F, '/sys_enter_read/ {print $1}')
  ioctls=$(echo "$out" | awk -F, '/sys_enter_ioctl/ {print $1}')
  waits=$(echo "$out" | awk -F, '/sys_enter_epoll_wait/ {print $1}')
  awk -v n="$name" -v g="$gib" -v d="$DUR" -v r="$reads" -v io="$ioctls" -v w="$waits" -v b=$((b1-b0)) -v s=$((s1-s0)) -v y=$((y1-y0)) -v t=$((t1-t0)) 'BEGIN{
    printf "%-10s %.3f GiB/s; wrk reads %d (%.0f bytes each), ioctls %d, epoll_waits %d; CPU 1 per GiB busy %.3f softirq %.3f sys %.3f; steal %.2f s\n",
      n, g/d, r, g*1073741824/r, io, w, b/100/g, s/100/g, y/100/g, t/100 }'
  if [ "$name" = bootfabric ]; then kill $P; wait $P 2>/dev/null; else kill "$(cat $W/nginx/nginx.pid)"; wait $P 2>/dev/null; sleep 0.5; fi
}
for r in $(seq "$ROUNDS"); do
  for v in ${VARIANTS:-bootfabric nginx}; do
    if [ "$v" = bootfabric ]; then
      rm -rf "$W"/state/*
      one bootfabric "$r" ip netns exec $S taskset -c 0 "$BIN" serve --config "$W/bootfabric-pin1.toml" 2>"$W/bootfabric.log"
    else
      one nginx "$r" ip netns exec $S taskset -c 0 nginx -p "$W/nginx" -c "$W/nginx/nginx-pin1.conf" 2>"$W/nginx.log"
    fi
  done
done
