#!/bin/bash
# usage: ssq.sh <workdir> <bootfabric-bin> <rounds>: image:1 pinned under RPS, Bootfabric and
# nginx alternating; wrk's socket (`ss -tmi` in the client's namespace) sampled every 0.25 s
# from a second into the run: per run the rate and the medians of its receive queue (bytes
# waiting for wrk), receive buffer (skmem rb), rcv_space and rcv_rtt.
set -u
W=$1; BIN=$2; ROUNDS=$3; DUR=${DUR:-8}; OUT=${OUT:-/tmp/probe/ssq}
mkdir -p "$OUT"
# shellcheck source=lab.sh
. "$(dirname "$0")/lab.sh"
cd "$W"
one() { # name round, start command...
  local name=$1 round=$2; shift 2
  "$@" & local P=$!
  sleep 2
  ip netns exec $C taskset -c 1 wrk -t1 -c1 -d"${DUR}s" --timeout 40s http://10.77.0.1/rack/image.bin >"$OUT/wrk-$name-$round.txt" 2>&1 &
  local wp=$!
  sleep 1
  : >"$OUT/ss-$name-$round.txt"; : >"$OUT/srv-$name-$round.txt"
  for _ in $(seq $(((DUR - 2) * 4))); do
    ip netns exec $C ss -tmiHn state established dst 10.77.0.1 >>"$OUT/ss-$name-$round.txt"
    ip netns exec $S ss -tmiHn state established src 10.77.0.1:80 >>"$OUT/srv-$name-$round.txt"
    sleep 0.25
  done
  wait $wp
  local gib
  gib=$(awk '/requests in/ {v=$5; sub(/,$/,"",v); u=v; gsub(/[0-9.]/,"",u); sub(/[A-Z]+$/,"",v); m=(u=="GB")?1:(u=="MB"?1/1024:1/1048576); print v*m}' "$OUT/wrk-$name-$round.txt")
  # ss prints a socket on two lines: Recv-Q first on the first, the details on the second
  awk -v n="$name" -v g="$gib" -v d="$DUR" '
    function med(a, k,   i, j, t) { for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
    /^[0-9]/ { k++; q[k] = $1 }
    /skmem:/ {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^skmem:/) { s = $i; sub(/.*,rb/, "", s); sub(/,.*/, "", s); rb[k] = s }
        if ($i ~ /^rcv_space:/) { s = $i; sub(/rcv_space:/, "", s); sp[k] = s }
        if ($i ~ /^rcv_rtt:/) { s = $i; sub(/rcv_rtt:/, "", s); rt[k] = s }
      } }
    END { printf "%-10s %.3f GiB/s; %d samples; medians: recv-Q %.0f KB, rb %.0f KB, rcv_space %.0f KB, rcv_rtt %.3f ms |", n, g/d, k, med(q,k)/1024, med(rb,k)/1024, med(sp,k)/1024, med(rt,k) }' "$OUT/ss-$name-$round.txt"
  # the server's socket: smoothed RTT, bytes in flight (unacked segments) and not yet sent,
  # send buffer; and from the last sample the time the connection was limited by the
  # receiver's window and by its own send buffer (per cent of its busy time)
  awk '
    function med(a, k,   i, j, t) { for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
    /skmem:/ { k++; un[k] = 0; ns[k] = 0
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^skmem:/) { s = $i; sub(/.*,tb/, "", s); sub(/,.*/, "", s); tb[k] = s }
        if ($i ~ /^rtt:/) { s = $i; sub(/rtt:/, "", s); sub(/\/.*/, "", s); rt[k] = s }
        if ($i ~ /^unacked:/) { s = $i; sub(/unacked:/, "", s); un[k] = s }
        if ($i ~ /^notsent:/) { s = $i; sub(/notsent:/, "", s); ns[k] = s }
        if ($i ~ /^rwnd_limited:/) { rw = $i; sub(/rwnd_limited:[0-9]*ms/, "", rw) }
        if ($i ~ /^sndbuf_limited:/) { sb = $i; sub(/sndbuf_limited:[0-9]*ms/, "", sb) }
      } }
    END { printf " server: rtt %.3f ms, unacked %.0f segs, notsent %.0f KB, tb %.0f KB, rwnd_limited %s, sndbuf_limited %s\n", med(rt,k), med(un,k), med(ns,k)/1024, med(tb,k)/1024, (rw == "" ? "-" : rw), (sb == "" ? "-" : sb) }' "$OUT/srv-$name-$round.txt"
  if [ "$name" = bootfabric ]; then kill $P; wait $P 2>/dev/null; else kill "$(cat "$W/nginx/nginx.pid")"; wait $P 2>/dev/null; sleep 0.5; fi
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
